"""The run configuration: OmegaConf structured dataclasses, validated before any work starts."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Dict, Optional

import yaml
from omegaconf import MISSING, OmegaConf

from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .failures import ConfigError
from .sources import MAX_FILE_BYTES, Source, recorded_settings, source_class, unknown_setting
from .tokenizer import tokenizer_class

__all__ = ["AudioConfig", "CodecConfig", "Config", "ConfigError", "GuardConfig", "OutputConfig", "RayConfig",
           "Source", "as_dict", "load_config", "validate"]

SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
# loudness targets: above the BS.1770 absolute gate (-70 LUFS), at most 0 LUFS (full scale)
LOUDNESS_RANGE = (-70.0, 0.0)
# auto/on/off settings: YAML's booleans (true, false, read into a string field as "True"/"False") mean on/off
SWITCH_WORDS = {"true": "on", "on": "on", "false": "off", "off": "off", "auto": "auto"}


@dataclass
class AudioConfig:
    resampler_quality: str = "HQ"  # soxr quality
    max_seconds: float = 4 * 3600.0  # longer clips are error records, not encodes (from the file's header, undecoded)
    decode_threads: int = 0  # 0: one per CPU the actor holds
    # 0: decode in the codec actor's threads. N > 0: each shard in flight is read and decoded by a Ray task of N
    # CPUs (its own process, on any node with free CPUs: CPU-only nodes can feed GPU actors), streamed to the
    # actor through the object store in bounded memory; GPU actors then reserve one CPU. See pipeline/actor/decode_tasks.py
    decode_task_cpus: int = 0
    # on: the actor's decode threads hand each file ffmpeg decodes (Vorbis, Opus, AAC) to one of as many processes of
    # its own (a GIL each: those formats do not scale in one process's threads; jobs/bench_decode.py); auto: on GPU
    # actors decoding in more than one thread; off. See pipeline/actor/decode_processes.py
    decode_processes: str = "auto"
    # an audio file (an HF path cell) or tar member larger than this is a `file_too_large` record, never read
    max_file_bytes: int = MAX_FILE_BYTES
    # normalise each clip's integrated loudness (BS.1770, pyloudnorm) to this many LUFS before encoding, as the
    # reference tokenizer's `loudness_normalize` does (its default target: -23); None: off. See pipeline/audio/loudness.py
    loudness_lufs: Optional[float] = None


@dataclass
class CodecConfig:
    # a hub repo id or a local folder, in transformers' format or the original release's (converted on
    # load); random:tiny|full for tests and demos. revision: a hub branch, tag or commit (pins the files)
    model: str = "bosonai/higgs-audio-v2-tokenizer"
    revision: Optional[str] = None
    cache_dir: Optional[str] = None  # node-local folder for converted original checkpoints; None: $AUDIOTOK_CACHE or ~/.cache/audiotok
    bandwidth: float = 2.0
    # which codes a clip has: model_card (zero-padded to whole 960-sample hops, `model.encode` alone: the model
    # card's) or authors (boson-ai's own HiggsAudioTokenizer.encode: no padding, their frame rule; for
    # fine-tuning or prompting Higgs Audio v2 itself). See README "Conventions".
    convention: str = "model_card"
    device: str = "auto"
    dtype: str = "float32"
    allow_tf32: bool = False
    seed: int = 0  # random presets only
    # Clips up to window_s go through the model in one pass (exact codes). Longer clips are encoded in windows with context_s of
    # audio on each side: with random weights, whose near-uniform attention is the worst case,
    # 45 s/10 s windows agreed 99.0% with a single pass on a 60 s clip (jobs/bench_codec.py).
    window_s: float = 120.0
    context_s: float = 10.0
    max_batch_seconds: Optional[float] = None  # None: the device's default policy
    max_clips: Optional[int] = None
    calibrate: str = "auto"  # measure batch policies at actor start: auto (GPU only), on, off (true/false too)


@dataclass
class OutputConfig:
    dir: str = MISSING
    overwrite: bool = False  # replace an output.dir written with other settings (run state first, then data)
    compression: str = "zstd"
    summary_interval_s: float = 900.0  # rewrite manifest.json from the commit records at most this often (and at the end)
    lease_timeout_s: float = 300.0  # a lease without a heartbeat for this long is taken over (a dead driver elsewhere)
    accept_new_versions: bool = False  # go on with an output after a torch/transformers/soxr upgrade (recorded)
    # the driver's writes (commit records, a failed shard's error file, the summary, the lease): tries on transient
    # store errors, the first delay doubling per try (jittered); a write that still fails stops the run (exit 3)
    write_attempts: int = 5
    write_backoff_s: float = 1.0
    # without a terminal (a Ray job's log), a progress line at most this often; on a terminal one live line
    progress_interval_s: float = 60.0


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: the cluster of `ray job submit`, else a local runtime
    num_actors: int = 0  # 0: one per GPU; on CPU as many as the cluster's CPUs and memory hold
    # 0: auto. CPU actors take 1 CPU each: torch's intra-op threads scale poorly on these convolutions,
    # so several 1-thread actors beat one many-thread actor (jobs/bench_pipeline.py). GPU actors take
    # the CPUs per GPU of the tightest GPU node, for decoding and resampling.
    cpus_per_actor: int = 0
    # 0: auto. CPU actors reserve 4.5 GB of Ray memory each (peak RSS 3.6 GB with 60-90 s clips and two
    # shards in flight, printed by jobs/bench_pipeline.py --shapes 16), so a node never runs more of them than
    # its memory holds. GPU actors: none.
    memory_per_actor_gb: float = 0.0
    # custom Ray resources each codec actor reserves besides CPUs/GPUs (e.g. {encoder: 1} to keep codec actors on
    # the nodes that offer it, while decode tasks, audio.decode_task_cpus, go to any node)
    actor_resources: Dict[str, float] = field(default_factory=dict)
    pool_seconds: float = 0.0  # audio gathered per encode call, bucketed inside; 0: 8x the batch budget
    max_attempts: int = 3  # tries per shard for transient failures (network, store 5xx, timeout, actor lost)
    max_consecutive_failures: int = 3  # an actor failing this many shards in a row (transient/unexpected) is replaced
    shard_timeout_s: float = 0.0  # a shard's time limit from when its actor starts it; 0: auto (see below)
    # auto limit: 4x the shard's expected time from its byte size and the speed of finished shards, never
    # below this; this alone where the size or speed is not known yet
    shard_timeout_min_s: float = 1800.0
    retry_backoff_s: float = 10.0  # first retry delay of a transient failure, doubling per attempt (jittered, max 300)
    pending_actor_warn_s: float = 120.0  # say so when replacement actors wait this long for resources
    progress_interval_s: float = 10.0
    # the metrics export port of a local Ray runtime the driver starts (0: Ray's choice); on a cluster Ray's own
    # settings apply. Prometheus scrapes http://HOST:PORT/metrics (see pipeline/telemetry/metrics.py)
    metrics_export_port: int = 0
    metrics_report_interval_s: float = 5.0  # how often processes report their metrics (local runtime)


@dataclass
class GuardConfig:
    max_error_fraction: float = 0.5  # stop when more samples fail than this ...
    min_samples: int = 200  # ... once this many have been read
    min_shards: int = 5  # and stop once this many shards finished ...
    max_failed_shard_fraction: float = 0.5  # ... if more than this share of them failed


@dataclass
class Config:
    # the settings of the kind `source.kind` names: that kind's Source subclass (pipeline/sources/)
    source: Source = field(default_factory=Source)
    audio: AudioConfig = field(default_factory=AudioConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """YAML file + OmegaConf dotlist overrides -> a validated `Config`. The `source` section is validated against
    the settings of the kind `source.kind` names (pipeline/sources/): a key of another kind is an error."""
    layers = [_load_yaml(path)] if path is not None else []
    layers.append(_parse_overrides(list(overrides)))
    kind = None
    try:
        schema = OmegaConf.structured(Config)
        kind = OmegaConf.select(OmegaConf.merge(*layers), "source.kind", default=None)
        schema.source = OmegaConf.structured(source_class(kind))
        merged = OmegaConf.merge(schema, *layers)
        config: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        if isinstance(error, ConfigKeyError) and key.startswith("source.") and key.count(".") == 1:
            raise unknown_setting(kind, key.split(".", 1)[1]) from None
        raise ConfigError(key, _first_line(error), "see configs/demo.yaml for the schema") from None
    validate(config)
    return config


def _load_yaml(path: str):
    if not os.path.isfile(path):
        raise ConfigError("config file", f"{path!r} does not exist" if not os.path.exists(path) else f"{path!r} is not a file",
                          "the first argument is a YAML config, e.g. configs/demo.yaml")
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or _first_line(error)
        raise ConfigError("config file", f"{path!r} is not valid YAML: {where}{problem}") from None
    except UnicodeDecodeError as error:
        raise ConfigError("config file", f"{path!r} is not text (UTF-8): byte {error.start}") from None


def _parse_overrides(overrides: list[str]):
    try:
        return OmegaConf.from_dotlist(overrides)
    except yaml.YAMLError as error:  # a value is parsed as YAML: `a=[x` or an unquoted `{`
        problem = getattr(error, "problem", None) or _first_line(error)
        raise ConfigError("overrides", f"{overrides} hold a value that is not valid YAML: {problem}",
                          "quote values holding [ ] { } , : (e.g. source.urls=['a-{0..9}.tar'])") from None


def _non_finite(node, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in a config (dataclasses, lists, dicts)."""
    if is_dataclass(node):
        items = ((f.name, getattr(node, f.name)) for f in fields(node))
    elif isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return prefix if isinstance(node, float) and not math.isfinite(node) else None
    for name, value in items:
        found = _non_finite(value, f"{prefix}.{name}" if prefix else str(name))
        if found:
            return found
    return None


# what torch.device takes and an actor can hold; a typo fails here, not in every actor after Ray started
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def validate(config: Config) -> None:
    non_finite = _non_finite(config)
    if non_finite:
        raise ConfigError(non_finite, "is NaN or infinite", "give a finite number")
    config.source.check()
    if config.audio.resampler_quality not in SOXR_QUALITIES:
        raise ConfigError("audio.resampler_quality", f"{config.audio.resampler_quality!r}", f"one of {SOXR_QUALITIES}")
    if config.audio.max_seconds <= 0:
        raise ConfigError("audio.max_seconds", "must be > 0")
    if config.audio.max_file_bytes < 1:
        raise ConfigError("audio.max_file_bytes", "must be >= 1")
    if config.audio.decode_threads < 0:
        raise ConfigError("audio.decode_threads", "must be >= 0", "0 uses one thread per CPU of the actor")
    for name, amount in config.ray.actor_resources.items():
        if name in ("CPU", "GPU", "memory") or not amount > 0:
            raise ConfigError(f"ray.actor_resources.{name}", f"{amount!r}", "a custom resource with an amount > 0; CPUs, GPUs "
                              "and memory are ray.cpus_per_actor, codec.device and ray.memory_per_actor_gb")
    if config.audio.decode_task_cpus < 0:
        raise ConfigError("audio.decode_task_cpus", "must be >= 0", "0 decodes in the codec actor's own threads")
    a = config.audio
    a.decode_processes = SWITCH_WORDS.get(str(a.decode_processes).lower(), a.decode_processes)
    if a.decode_processes not in ("auto", "on", "off"):
        raise ConfigError("audio.decode_processes", f"{a.decode_processes!r}", "use auto (GPU actors), on or off")
    if a.decode_processes == "on" and a.decode_task_cpus:
        raise ConfigError("audio.decode_processes", "applies to the actor's own decoding, and audio.decode_task_cpus "
                          "moves decoding into decode tasks", "set one of them: decode_task_cpus=0 or decode_processes=off")
    loudness = config.audio.loudness_lufs
    if loudness is not None and not LOUDNESS_RANGE[0] < loudness <= LOUDNESS_RANGE[1]:  # NaN fails too
        raise ConfigError("audio.loudness_lufs", f"{loudness} LUFS is outside ({LOUDNESS_RANGE[0]:g}, {LOUDNESS_RANGE[1]:g}]",
                          "the reference tokenizer normalises to -23; null turns normalisation off")
    c = config.codec
    if not _DEVICE.fullmatch(c.device):
        raise ConfigError("codec.device", f"{c.device!r} is not a device", "use auto, cpu, cuda, mps or xpu")
    if c.device.startswith("cuda:"):
        raise ConfigError("codec.device", f"{c.device!r} names one GPU, but Ray gives each codec actor its own GPU, "
                          "which the actor sees as device 0", "use cuda (or auto): one actor per GPU")
    if c.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError("codec.dtype", f"{c.dtype!r}", "use float32, bfloat16 or float16")
    conventions = tokenizer_class(c.model).CONVENTIONS
    if c.convention not in conventions:
        raise ConfigError("codec.convention", f"{c.convention!r} is not a convention of {c.model}",
                          f"use one of {', '.join(conventions)} ("
                          + "; ".join(f"{name}: {meaning}" for name, meaning in conventions.items()) + ")")
    if c.bandwidth <= 0:
        raise ConfigError("codec.bandwidth", f"{c.bandwidth} kbps", "the real checkpoint offers 0.5, 1, 1.5 and 2")
    if c.window_s <= 0 or c.context_s < 0:
        raise ConfigError("codec.window_s", "window must be > 0 and context >= 0")
    if c.max_batch_seconds is not None and c.max_batch_seconds <= 0:
        raise ConfigError("codec.max_batch_seconds", "must be > 0, or null for the device default")
    # YAML 1.1 (OmegaConf's, on the command line too) reads on/off/yes/no as booleans, which reach a str field
    # as 'True'/'False': the words as written and the booleans mean the same
    c.calibrate = SWITCH_WORDS.get(str(c.calibrate).lower(), c.calibrate)
    if c.calibrate not in ("auto", "on", "off"):
        raise ConfigError("codec.calibrate", f"{c.calibrate!r}", "use auto (GPU only), on or off")
    if c.max_clips is not None and c.max_clips < 1:
        raise ConfigError("codec.max_clips", "must be >= 1, or null for the device default")
    if not config.output.dir:
        raise ConfigError("output.dir", "empty", "a local folder or an fsspec URL")
    if config.output.summary_interval_s < 0 or config.output.lease_timeout_s <= 0:
        raise ConfigError("output.summary_interval_s", "summary_interval_s must be >= 0 and lease_timeout_s > 0")
    if config.output.write_attempts < 1:
        raise ConfigError("output.write_attempts", f"{config.output.write_attempts}", "use 1 or more (1: no retry)")
    if config.output.write_backoff_s < 0:
        raise ConfigError("output.write_backoff_s", f"{config.output.write_backoff_s}", "use 0 or more seconds")
    if config.output.compression not in ("zstd", "snappy", "gzip", "none"):
        raise ConfigError("output.compression", f"{config.output.compression!r}", "use zstd, snappy, gzip or none")
    r = config.ray
    if r.num_actors < 0 or r.cpus_per_actor < 0 or r.memory_per_actor_gb < 0 or r.max_attempts < 1 or r.pool_seconds < 0:
        raise ConfigError("ray", "num_actors, cpus_per_actor, memory_per_actor_gb and pool_seconds must be >= 0 "
                                 "(0: auto), max_attempts >= 1")
    if r.max_consecutive_failures < 1:
        raise ConfigError("ray.max_consecutive_failures", f"{r.max_consecutive_failures}", "use 1 or more")
    if r.shard_timeout_s < 0 or r.shard_timeout_min_s <= 0 or r.retry_backoff_s < 0 or r.pending_actor_warn_s <= 0:
        raise ConfigError("ray.shard_timeout_s", "shard_timeout_s and retry_backoff_s must be >= 0, "
                          "shard_timeout_min_s and pending_actor_warn_s > 0")
    if not 0 <= r.metrics_export_port <= 65535:
        raise ConfigError("ray.metrics_export_port", f"{r.metrics_export_port}", "a TCP port 1-65535, or 0 for Ray's choice")
    if r.metrics_report_interval_s <= 0:
        raise ConfigError("ray.metrics_report_interval_s", f"{r.metrics_report_interval_s}", "use a number of seconds > 0")
    if config.output.progress_interval_s < 0:
        raise ConfigError("output.progress_interval_s", f"{config.output.progress_interval_s}", "use 0 or more seconds")
    g = config.guard
    if g.min_samples < 1 or g.min_shards < 1:
        raise ConfigError("guard", "min_samples and min_shards must be >= 1")
    if not 0 < g.max_failed_shard_fraction <= 1:
        raise ConfigError("guard.max_failed_shard_fraction", f"{g.max_failed_shard_fraction}", "a fraction in (0, 1]")
    if not 0 < g.max_error_fraction <= 1:
        raise ConfigError("guard.max_error_fraction", f"{g.max_error_fraction}", "a fraction in (0, 1]")


def as_dict(config: Config) -> dict:
    """The config as the manifest records it (its `source` section flat, as it always was: recorded_settings)."""
    return dict(OmegaConf.to_container(OmegaConf.structured(config), resolve=True),
                source=recorded_settings(config.source))
