"""The training side of the output: balanced reading across ranks and workers, crops, token-budget batches,
and the plan built from commit records without opening data files. Outputs are written without the codec
(`demo.synth_tokens`: ShardWriter + RunState commits, as a run writes them)."""

import random
import re
from collections import Counter

import numpy as np
import pyarrow.parquet
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.reading.batching import Batcher, undo_delay_pattern
from pipeline.reading.dataset import TokenDataset, list_units
from pipeline.reading.epochs import EpochPlan, Unit, load_units
from pipeline.runstate import read_run
from pipeline.storage import Storage
from demo.synth_tokens import uniform_lengths, write_token_output
from pipeline.writer import ROW_GROUP_ROWS

SHARDS = [1, 3, 700, 2501]  # 3,205 rows; the last shard has three row groups (1024, 1024, 453)
MAX_FRAMES = [40, 40, 6, 60]  # short rows in the small shards, long ones in the big one: slices differ in frames


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uneven") / "out")
    rows = write_token_output(out, SHARDS, lengths=lambda rng, n, shard: rng.integers(1, MAX_FRAMES[shard] + 1, n))
    return out, rows


def per_rank(out, world, **kwargs):
    """Each rank's items (rows or batches) through a real DataLoader with two workers."""
    seen = []
    for rank in range(world):
        dataset = TokenDataset(out, rank=rank, world_size=world, **kwargs)
        seen.append((dataset, list(DataLoader(dataset, batch_size=None, num_workers=2))))
    return seen


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_equal_row_counts_and_no_rank_sees_a_row_twice_over_uneven_shards(uneven, world, drop_last):
    out, rows = uneven
    n = len(rows)
    ranks = per_rank(out, world, shuffle_buffer=16, seed=3, drop_last=drop_last)
    counts = [len(items) for _, items in ranks]
    size = n // world if drop_last else -(-n // world)
    assert counts == [size] * world and ranks[0][0].per_rank == size
    keys = [[row["key"] for row in items] for _, items in ranks]
    assert all(len(set(k)) == len(k) for k in keys)  # no rank sees a row twice
    seen = Counter(key for k in keys for key in k)
    if drop_last:  # the remainder is not read, nothing is read twice
        assert max(seen.values()) == 1 and len(seen) == n - n % world
    else:  # every row is read; the last slice wraps: world * size - n rows are read by two ranks
        assert set(seen) == set(rows) and sum(seen.values()) - n == world * size - n
    for row in ranks[0][1][:50]:
        np.testing.assert_array_equal(row["codes"].numpy(), rows[row["key"]])


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("mode", ["batches", "consecutive"])
def test_ranks_get_equal_batch_counts_over_uneven_shards(uneven, world, mode):
    out, rows = uneven
    budget = 2 * 60 * 4  # 4 rows of the longest rows, 2 codebooks
    kwargs = (dict(batcher=Batcher(budget, pad_id=1024, buffer_rows=64)) if mode == "batches"
              else dict(crop_frames=30, crop="consecutive"))
    ranks = per_rank(out, world, shuffle_buffer=16, seed=5, **kwargs)
    counts = [len(items) for _, items in ranks]
    assert counts == [ranks[0][0].per_rank] * world and counts[0] > 0
    if mode == "batches":
        for _, items in ranks:
            assert all(b["codes"].numel() <= budget or len(b["key"]) == 1 for b in items)
        keys = [[key for b in items for key in b["key"]] for _, items in ranks]
    else:
        keys = [[(row["key"], row["crop_start"]) for row in items] for _, items in ranks]
    assert all(len(set(k)) == len(k) for k in keys)  # no rank sees a row (window) twice
    # the slices differ in frames: some workers drop the rest of their slice, others fill from other ranks
    seen = Counter(key for k in keys for key in k)
    wrapped = world * -(-len(rows) // world) - len(rows)
    assert sum(seen.values()) - len(seen) > wrapped  # filled: read by two ranks beyond the wrap
    if mode == "batches":
        assert len(seen) < len(rows)  # dropped: rows left for another epoch
    again = TokenDataset(out, rank=1, world_size=world, shuffle_buffer=16, seed=5, **kwargs)
    same = [b["key"] for b in DataLoader(again, batch_size=None, num_workers=2)]
    assert same == [b["key"] for b in ranks[1][1]]  # deterministic from seed and epoch
    again.set_epoch(1)
    assert [b["key"] for b in DataLoader(again, batch_size=None, num_workers=2)] != same


def test_fill_ranges_never_overlap_their_rank_slice_or_each_other():
    plan_units = [Unit("x", f"f{i}", 0, rows, rows, 2, [(rows, rows)]) for i, rows in enumerate([1, 3, 700, 1024, 1024, 453, 5])]
    for drop_last in (False, True):
        plan = EpochPlan(plan_units, 3, drop_last, order_seed=7)

        def positions(a, b):
            return {(u.file, r) for u, first, end in plan.pieces(a, b) for r in range(first, end)}

        for rank in range(3):
            own = [positions(*plan.worker_range(rank, w, 2)) for w in range(2)]
            fill = [positions(*plan.fill_range(rank, w, 2)) for w in range(2)]
            assert not own[0] & own[1] and not fill[0] & fill[1]
            assert not (own[0] | own[1]) & (fill[0] | fill[1])
            assert len(own[0] | own[1]) == plan.per_rank and len(own[0] | own[1] | fill[0] | fill[1]) == plan.total


def test_commit_records_carry_the_row_groups_of_their_files(uneven):
    out, rows = uneven
    storage = Storage(out)
    done = read_run(storage).done()
    for record in done.values():
        (name,) = [f for f in record.files if f.endswith(".parquet")]
        parquet = pyarrow.parquet.ParquetFile(storage.path(name))
        frames = [parquet.read_row_group(g, columns=["num_frames"]).column(0).to_numpy()
                  for g in range(parquet.metadata.num_row_groups)]
        summaries = record.row_groups[name]
        assert [[n, f] for n, f, _ in summaries] == [[len(x), int(x.sum())] for x in frames]
        for (_, _, bins), x in zip(summaries, frames):  # rows and frames per power-of-two length bin
            assert bins == [[b, int(((x >= 2**b) & (x < 2 ** (b + 1))).sum()), int(x[(x >= 2**b) & (x < 2 ** (b + 1))].sum())]
                            for b in range(17) if ((x >= 2**b) & (x < 2 ** (b + 1))).any()]
    assert sorted(len(g) for r in done.values() for g in r.row_groups.values()) == [1, 1, 1, 3]
    assert max(n for r in done.values() for g in r.row_groups.values() for n, _, _ in g) == ROW_GROUP_ROWS


class CountingParquetFile(pyarrow.parquet.ParquetFile):
    opened = 0

    def __init__(self, *args, **kwargs):
        type(self).opened += 1
        super().__init__(*args, **kwargs)


def test_building_the_dataset_opens_no_data_file_and_older_records_open_only_theirs(tmp_path, monkeypatch, uneven):
    out, _ = uneven
    legacy = str(tmp_path / "legacy")
    write_token_output(legacy, [5, 1100], seed=1, legacy=True)
    monkeypatch.setattr(pyarrow.parquet, "ParquetFile", CountingParquetFile)
    TokenDataset(out, rank=0, world_size=2, batcher=Batcher(400, pad_id=1024))
    assert CountingParquetFile.opened == 0
    mixed = load_units([out, legacy])
    assert CountingParquetFile.opened == 2  # the two files whose records lack row_groups
    write_token_output(str(tmp_path / "new"), [5, 1100], seed=1)
    fresh = load_units([str(tmp_path / "new")])
    assert [(u.rows, u.frames) for u in mixed if u.output_dir == legacy] == [(u.rows, u.frames) for u in fresh]
    assert [(u.file, u.group) for u in fresh] == [(f, g) for _, f, g in list_units([str(tmp_path / "new")])]


def test_random_crops_move_with_the_epoch_and_repeat_for_the_same_seed(uneven):
    out, rows = uneven

    def crops(epoch, seed=0):
        dataset = TokenDataset(out, crop_frames=8, crop="random", seed=seed)
        dataset.set_epoch(epoch)
        found = {}
        for item in dataset:
            codes, start = rows[item["key"]], item["crop_start"]
            np.testing.assert_array_equal(item["codes"].numpy(), codes[:, start : start + 8])
            if codes.shape[1] <= 8:
                assert start == 0 and item["codes"].shape[1] == codes.shape[1]  # short rows whole
            found[item["key"]] = start
        return found

    first = crops(0)
    assert len(first) == len(rows)
    assert crops(0) == first
    long_rows = [k for k, c in rows.items() if c.shape[1] > 16]
    for other in (crops(1), crops(0, seed=1)):  # another epoch, another seed: most offsets move
        assert sum(other[k] != first[k] for k in long_rows) > len(long_rows) // 2


def test_consecutive_crops_cover_each_row(uneven):
    out, rows = uneven
    windows: dict[str, list] = {}
    for item in TokenDataset(out, crop_frames=8, crop="consecutive"):
        windows.setdefault(item["key"], []).append((item["crop_start"], item["codes"].numpy()))
    assert set(windows) == set(rows)
    for key, parts in windows.items():
        parts.sort(key=lambda p: p[0])
        assert [s for s, _ in parts] == list(range(0, rows[key].shape[1], 8))
        assert all(c.shape[1] == 8 for _, c in parts[:-1]) and 1 <= parts[-1][1].shape[1] <= 8
        np.testing.assert_array_equal(np.concatenate([c for _, c in parts], axis=1), rows[key])


def test_batches_are_padded_masked_and_delayed_as_asked():
    rows = [{"key": f"r{t}", "codes": torch.arange(3 * t).reshape(3, t)} for t in (2, 5, 4)]
    plain = Batcher(10_000, pad_id=-1).collate(rows)
    assert plain["codes"].shape == (3, 3, 5) and plain["codes"].dtype == torch.long and plain["key"] == ["r2", "r5", "r4"]
    assert plain["lengths"].tolist() == [2, 5, 4]
    assert plain["mask"].tolist() == [[1, 1, 0, 0, 0], [1] * 5, [1, 1, 1, 1, 0]]
    assert torch.equal(plain["codes"][0, :, :2], rows[0]["codes"]) and (plain["codes"][0, :, 2:] == -1).all()
    assert torch.equal(plain["codebook_mask"], plain["mask"][:, None, :].expand(-1, 3, -1))
    delayed = Batcher(10_000, pad_id=-1, delay_pattern=True).collate(rows)
    assert delayed["codes"].shape == (3, 3, 7)
    assert torch.equal(undo_delay_pattern(delayed["codes"])[0, :, :2], rows[0]["codes"])
    book = delayed["codebook_mask"][0]  # row of 2 frames: codebook k real at frames k, k + 1
    assert book.tolist() == [[1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0]]
    assert torch.equal(delayed["codes"] != -1, delayed["codebook_mask"])  # codes are never -1 here
    assert delayed["mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_length_sorted_buffer_groups_rows_of_similar_length():
    rng = np.random.default_rng(0)
    rows = [{"key": str(i), "codes": torch.zeros(2, int(t), dtype=torch.long)}
            for i, t in enumerate(rng.integers(1, 200, 2000))]
    budget = 2 * 200 * 8

    def padding(batches):
        return 1 - sum(int(b["lengths"].sum()) * 2 for b in batches) / sum(b["codes"].numel() for b in batches)

    batches = list(Batcher(budget, pad_id=0, buffer_rows=500).batches(iter(rows), random.Random(0)))
    assert sorted(k for b in batches for k in b["key"]) == sorted(r["key"] for r in rows)
    assert all(b["codes"].numel() <= budget for b in batches)
    arrival, current = [], []  # the same budget, rows batched in arrival order
    collate = Batcher(budget, pad_id=0).collate
    for row in rows:
        longest = max([row["codes"].shape[1]] + [r["codes"].shape[1] for r in current])
        if current and (len(current) + 1) * longest * 2 > budget:
            arrival.append(collate(current))
            current = []
        current.append(row)
    arrival.append(collate(current))
    assert padding(batches) < padding(arrival) / 4


def test_readme_training_loop_runs(tmp_path):
    """The 'Reading it' example of README.md, as written there, on a tiny output and a stand-in model."""
    readme = open(__file__.rsplit("/tests/", 1)[0] + "/README.md").read()
    section = readme[readme.index("### Reading it"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = str(tmp_path / "demo")
    write_token_output(out, [7, 9, 4], num_codebooks=8, lengths=uniform_lengths(5, 900))

    class MyAudioLM(torch.nn.Module):  # trivial: one weight per token id, a squared error on the real codes
        calls = 0

        def __init__(self, vocab_size, num_codebooks):
            super().__init__()
            self.vocab_size, self.embed = vocab_size, torch.nn.Embedding(vocab_size, 1)

        def forward(self, tokens, labels, mask):
            MyAudioLM.calls += 1
            assert tokens.shape == labels.shape == mask.shape and tokens.shape[1] == 8 and mask.any()
            assert tokens.max() < self.vocab_size and (labels[~mask] == 1024).all()  # padding and delay use the pad id
            guess = self.embed(tokens).squeeze(-1)
            return (guess[mask] - labels[mask] / self.vocab_size).pow(2).mean()

    MyAudioLM.calls = 0
    exec(compile(snippet.replace('"outputs/demo"', repr(out)), "README.md", "exec"), {"MyAudioLM": MyAudioLM})
    assert MyAudioLM.calls >= 10


@pytest.mark.parametrize("mode,world,workers", [("rows", 2, 2), ("batches", 2, 2), ("batches", 1, 1)])
def test_a_restart_after_n_batches_yields_none_of_the_rows_received_before_it(tmp_path, mode, world, workers):
    out = str(tmp_path / "out")
    write_token_output(out, [30, 45, 17], seed=4)
    kwargs = dict(rank=world - 1, world_size=world, shuffle_buffer=8, seed=2)
    if mode == "batches":
        kwargs["batcher"] = Batcher(2 * 40 * 3, pad_id=1024, buffer_rows=16)

    def keys(item):
        return tuple(item["key"]) if mode == "batches" else (item["key"],)

    def epoch_one(dataset):
        dataset.set_epoch(1)
        return DataLoader(dataset, batch_size=None, num_workers=workers)

    whole = [keys(item) for item in TokenDataset(out, **kwargs).track(epoch_one(TokenDataset(out, **kwargs)))]
    first = TokenDataset(out, **kwargs)
    received = []
    for item in first.track(epoch_one(first)):
        received.append(keys(item))
        if len(received) == 5:
            break
    state = first.state_dict()
    assert state["epoch"] == 1 and state["received"] == 5
    again = TokenDataset(out, **kwargs)
    again.load_state_dict(state)
    rest = [keys(item) for item in again.track(DataLoader(again, batch_size=None, num_workers=workers))]
    # the rest of the same epoch (the DataLoader starts its turns at worker 0 again, so only the order may differ)
    assert sorted(received + rest) == sorted(whole)
    assert not {k for b in received for k in b} & {k for b in rest for k in b}
