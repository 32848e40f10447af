"""The storage layer's throughput against plain boto3, on the local S3 server (SeaweedFS).

    .venv/bin/python bench/storage.py [--mb 100] [--rounds 3]

Starts its own ``weed mini`` (deploy/local_s3.py), then moves the same bytes both ways, in
alternating rounds (the best of each counts, which filters out noise from other processes):

* corpus download: :func:`model_trainer.core.storage.fetch_corpus` (streamed to disk in 8 MiB
  blocks and digested, into a fresh cache folder each round) against boto3's
  ``download_file`` (its transfer manager: ranged GETs on 10 threads);
* checkpoint upload: :meth:`RemoteCheckpoints.upload` of a ``--mb`` checkpoint (the file,
  its manifest, the listing that prunes old steps: everything a checkpoint adds to the step
  that writes it) against boto3's ``upload_file`` of the same file;
* artifact upload: :func:`publish_artifact` of a folder of four files (``--mb`` in all,
  manifest last) against boto3's ``upload_file`` of each.

Progress goes to stderr; the last stdout line is one JSON object with the MB/s of each side,
ratio_<what> (ours over boto3's; the target is >= 0.8) and checkpoint_step_s (the seconds a
``--mb`` checkpoint adds to its step).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))

from local_s3 import LocalS3, free_port
from model_trainer.core import storage
from model_trainer.engine.remote import RemoteCheckpoints, publish_artifact


@runtime_checkable
class Boto3S3(Protocol):
    def download_file(self, Bucket: str, Key: str, Filename: str) -> None: ...

    def upload_file(self, Filename: str, Bucket: str, Key: str) -> None: ...


def boto3_client() -> Boto3S3:
    boto3 = importlib.import_module("boto3")
    client: object = boto3.client("s3")  # endpoint and keys from the AWS_* variables
    if not isinstance(client, Boto3S3):
        raise TypeError("boto3's client lacks upload_file/download_file")
    return client


def best(rounds: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mb << 20
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = LocalS3(workdir=work / "s3", port=free_port())
    server.start()
    os.environ.update(server.client_env())
    storage.forget()
    try:
        fs = storage.store()
        client = boto3_client()
        bucket = server.bucket
        blob = work / "blob.bin"
        with open(blob, "wb") as out:  # text-like bytes: a corpus, and a checkpoint's size
            line = b"the quick brown fox jumps over the lazy dog again and again\n"
            out.write((line * (size // len(line) + 1))[:size])
        sha = hashlib.sha256(blob.read_bytes()).hexdigest()
        fs.put_file(str(blob), f"s3://{bucket}/corpus.txt")
        artifact = work / "artifact"
        artifact.mkdir()
        names = [f"part-{i}.bin" for i in range(4)]
        for name in names:
            shutil.copyfile(blob, artifact / name)
            os.truncate(artifact / name, size // 4)
        files = {name: "-" for name in names}
        (artifact / "manifest.json").write_text(json.dumps({"files": files}))
        remote = RemoteCheckpoints(f"s3://{bucket}/bench", "job", 1, 120.0)
        figures: dict[str, float] = {}
        counter = [0]

        # Both write a fresh file each round (ours into an empty download cache), the last
        # round's removed first: the same disk work on either side.
        def ours_download() -> None:
            shutil.rmtree(work / "dl", ignore_errors=True)
            storage.fetch_corpus(f"s3://{bucket}/corpus.txt", work / "dl", size * 2)

        def boto_download() -> None:
            (work / "b.bin").unlink(missing_ok=True)
            client.download_file(Bucket=bucket, Key="corpus.txt", Filename=str(work / "b.bin"))

        def ours_checkpoint() -> None:
            counter[0] += 1
            remote.upload(blob, counter[0], sha)

        def boto_checkpoint() -> None:
            client.upload_file(Filename=str(blob), Bucket=bucket, Key="boto/checkpoint.pt")

        def ours_artifact() -> None:
            publish_artifact(artifact, f"s3://{bucket}/artifact", 120.0)

        def boto_artifact() -> None:
            for name in [*names, "manifest.json"]:
                client.upload_file(Filename=str(artifact / name), Bucket=bucket, Key=f"b/{name}")

        pairs = {
            "download": (ours_download, boto_download),
            "checkpoint_upload": (ours_checkpoint, boto_checkpoint),
            "artifact_upload": (ours_artifact, boto_artifact),
        }
        mb = size / 1e6
        for what, (ours, theirs) in pairs.items():
            ours_s = theirs_s = float("inf")
            for _ in range(args.rounds):  # alternate, so a noisy moment hits both
                ours_s = min(ours_s, best(1, ours))
                theirs_s = min(theirs_s, best(1, theirs))
            figures[f"{what}_mb_s"] = round(mb / ours_s, 1)
            figures[f"{what}_boto3_mb_s"] = round(mb / theirs_s, 1)
            figures[f"ratio_{what}"] = round(theirs_s / ours_s, 3)
            if what == "checkpoint_upload":
                figures["checkpoint_step_s"] = round(ours_s, 3)
            sys.stderr.write(f"{what}: ours {ours_s:.2f}s boto3 {theirs_s:.2f}s\n")
        figures["mb"] = args.mb
        sys.stdout.write(json.dumps(figures) + "\n")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
