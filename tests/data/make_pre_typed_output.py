"""How tests/data/pre_typed_output/ was made: a real run of the code before the run state held typed records
(branch hrec, parent commit 8b9cf3f), kept so that tests/test_typed_records.py can read it with the code of today.

    PYTHONPATH=$PWD python tests/data/make_pre_typed_output.py    # from the repository root, needs local Ray

Three shards of the tiny random codec: one done with a sample error record (a sample without audio), one failed
permanently (a missing tar), one failed as a cut tar. Inputs are written to a temporary folder and removed; the
output is copied here with its commit records, summary, digest and data. Do not rerun it to "refresh" the data:
its point is that it was written by older code.
"""

import os
import shutil
import sys
import tempfile

from omegaconf import OmegaConf

from demo.synth import SynthSample, random_sample, write_tar
from pipeline.run import main as cli_main

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "pre_typed_output")


def main() -> int:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        good = [random_sample(rng, f"g_{i:03d}", 0.3 + 0.2 * i, ext) for i, ext in enumerate(["wav", "flac"])]
        good.append(SynthSample("g_text_only", {"txt": b"no audio here"}, 0))
        write_tar(os.path.join(tmp, "good.tar"), good)
        write_tar(os.path.join(tmp, "cut.tar"), [random_sample(rng, f"c_{i:03d}", 0.4, "wav") for i in range(3)])
        with open(os.path.join(tmp, "cut.tar"), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(tmp, "cut.tar")) * 2 // 3)
        urls = [os.path.join(tmp, f"{n}.tar") for n in ("good", "missing", "cut")]
        out = os.path.join(tmp, "out")
        OmegaConf.save(OmegaConf.create({"source": {"kind": "webdataset", "urls": urls},
                                         "codec": {"model": "random:tiny"}, "output": {"dir": out},
                                         "ray": {"pool_seconds": 4.0, "progress_interval_s": 1.0, "num_actors": 1}}),
                       os.path.join(tmp, "run.yaml"))
        status = cli_main([os.path.join(tmp, "run.yaml")])
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(out, OUT)
    return 0 if status == 1 else 1  # incomplete: two shards failed, as meant


if __name__ == "__main__":
    sys.exit(main())
