"""Image builds through the API beside the same tools run by hand, and VMs booted from them.

    .venv/bin/python bench/image_bench.py [--rounds 5] [--mib 100] [--layers 5] [--vms 3]

1. Build time. Every round pushes a new image of `--mib` MiB of random data in `--layers`
   layers to a local registry (a CNCF Distribution on 127.0.0.1), then builds it twice:
   - through a real `vers-orchestrator serve` (SQLite): `POST /images/create`, then
     `GET /images/{name}/status` every 0.1 s until `completed`; the server's own step times
     come from its log line `image <name>: steps fetch=… unpack=… filesystem=…`;
   - by hand, the commands the server runs, with the same flags: `skopeo copy`,
     `umoci unpack`, `cp -al` of the same base tree + `rsync --ignore-existing`, `du -sm`
     and `mkfs.ext4 -d` of the same total size.
   The order of the two alternates from round to round, and dirty pages are written back
   before each build. The project's overhead is (API total - by-hand total) / by-hand
   total, on the medians. The server's log timestamps split the rest of its total (request
   to build start, steps end to job completed, completed to seen by the poll), and the
   by-hand side times apart the removals of scratch trees the server does before it
   marks the job completed.
   The server gets an images folder of its own (its `default` links to build/images'),
   so that a test server starting on build/images does not remove its builds in progress.
2. New root (`wait_boot=true`) → first exec of `true`, from a built image and from the
   default image, interleaved; every VM is deleted before the next is made.

Prints Markdown tables for bench/README.md and writes bench/results/images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
# The registry, the image builder and the server harness are the tests' own: one way to
# start them, kept working by the test suite.
sys.path.insert(0, str(REPO))

from tests.image_sources import Registry, build_large_oci_image, push  # noqa: E402
from tests.support import IMAGES_DIR, Backend, Server, make_key  # noqa: E402

from vers_orchestrator.drivers.qemu.built_images import (  # noqa: E402
    EXCLUDED,
    INODE_BYTES,
    INODES_PER_FREE_MIB,
    METADATA_SHARE,
    MIN_METADATA_MIB,
    MIN_TOTAL_MIB,
    SPARE_INODES,
    base_tree_path,
)
from vers_orchestrator.drivers.qemu.images import ensure_default_image, load_image  # noqa: E402

RESULTS = REPO / "bench" / "results" / "images.json"
SIZE_MIB = 256
POLL_SECONDS = 0.1
STEPS = ("fetch", "unpack", "filesystem")
STEP_LINE = re.compile(
    r"^(\S+ \S+) .* image (\S+): steps fetch=([\d.]+)s unpack=([\d.]+)s filesystem=([\d.]+)s$"
)
TRUE = {"command": ["true"]}


def log_time(stamp: str) -> float:
    """The server log's asctime ("2026-12-04 19:05:00,123", local time) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Bench:
    def __init__(
        self, server: Server, token: str, registry: Registry, scratch: Path, images: Path
    ) -> None:
        self.server = server
        self.registry = registry
        self.scratch = scratch
        self.client = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=600
        )
        self.samples: dict[str, list[float]] = {}
        # The tree the server copies with `cp -al`: the resolved default image's extraction.
        self.base_tree = base_tree_path(images, load_image((images / "default").resolve()))

    def record(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def new_image(self, tag: str, mib: int, layers: int) -> str:
        """A fresh random image in the registry: new content, so no build is a cache hit."""
        layout = self.scratch / f"source-{tag}"
        build_large_oci_image(layout, total_mib=mib, layers=layers)
        push(layout, self.registry, f"bench/image:{tag}")
        shutil.rmtree(layout)
        return f"{self.registry.host}/bench/image:{tag}"

    # ---------------------------------------------------------------- through the API

    def build_via_api(self, name: str, reference: str, *, record: bool = True) -> None:
        settle()
        log_offset = self.server.log_path.stat().st_size
        sent = time.time()
        started = time.perf_counter()
        created = self.client.post(
            "/api/v1/images/create",
            json={
                "image_name": name,
                "source": {"type": "docker", "image_ref": reference},
                "size_mib": SIZE_MIB,
            },
        )
        assert created.status_code == 201, created.text
        while True:
            status = self.client.get(f"/api/v1/images/{name}/status").json()
            if status["status"] in ("completed", "failed"):
                break
            time.sleep(POLL_SECONDS)
        total = time.perf_counter() - started
        seen = time.time()
        assert status["status"] == "completed", status
        if not record:
            return
        log = self.server.log_path.read_text()[log_offset:]
        steps = [found for line in log.splitlines() if (found := STEP_LINE.match(line))]
        # No steps line means the build was skipped as a rebuild of known content.
        assert len(steps) == 1, log
        assert steps[0].group(2) == name, log
        fetch, unpack, filesystem = (float(steps[0].group(n)) for n in (3, 4, 5))
        for step, seconds in zip(STEPS, (fetch, unpack, filesystem), strict=True):
            self.record(f"api {step}", seconds)
        self.record("api steps", fetch + unpack + filesystem)
        self.record("api total", total)
        # Where the rest of the total goes, from the log's millisecond timestamps (same
        # machine, same clock as `sent` and `seen`).
        building = self.log_stamp(log, f"image {name} (job ", ": building from ")
        built = self.log_stamp(log, f"image {name} (job ", ": built, ")
        steps_logged = log_time(steps[0].group(1))
        self.record("api: request → build starts", building - sent)
        self.record(
            "api: build starts → steps start", steps_logged - building - fetch - unpack - filesystem
        )
        # The driver logs its "filesystem: ext4 of …" line between `du` and `mkfs.ext4`.
        ext4_logged = self.log_stamp(log, f"image {name}: ", ": filesystem: ext4 of ")
        self.record(
            "api: filesystem, cp -al + rsync + ENV + du", ext4_logged - (steps_logged - filesystem)
        )
        self.record(
            "api: filesystem, mkfs.ext4 + removing the merged tree", steps_logged - ext4_logged
        )
        self.record("api: steps end → job completed", built - steps_logged)
        self.record("api: job completed → client sees it", seen - built)
        self.record("api: image size MiB", status["size_mib"])

    @staticmethod
    def log_stamp(log: str, prefix: str, marker: str) -> float:
        for line in log.splitlines():
            if prefix in line and marker in line:
                date, clock = line.split(" ", 2)[:2]
                return log_time(f"{date} {clock}")
        raise AssertionError(f"no line with {prefix!r} and {marker!r} in:\n{log}")

    def delete_image(self, name: str) -> None:
        listed = self.client.get("/api/v1/images", params={"limit": 100}).json()
        [image] = [image for image in listed["images"] if image["image_name"] == name]
        self.client.delete(f"/api/v1/images/images/{image['base_image_id']}").raise_for_status()

    # --------------------------------------------------------------------- by hand

    def build_by_hand(self, reference: str, tag: str) -> None:
        # On the same disk as the base tree, which `cp -al` needs (hard links).
        settle()
        work = Path(tempfile.mkdtemp(prefix=f"hand-{tag}-", dir=self.scratch))
        layout, bundle, merged = work / "layout", work / "bundle", work / "merged"
        try:
            # The server's exact skopeo flags (image_sources.pull), so the two fetches do
            # the same work.
            fetch = timed(
                "skopeo", "--override-os", "linux", "--override-arch", "amd64", "copy", "-q",
                "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:latest",
            )  # fmt: skip
            unpack = timed("umoci", "unpack", "--image", f"{layout}:latest", str(bundle))
            lay_over = timed("cp", "-al", str(self.base_tree), str(merged))
            # rsync's exit status 23/24 (entries that cannot be laid over) is accepted by
            # the server too; this image has none, so any failure is a real one.
            lay_over += timed(
                "rsync", "-aHAX", "--sparse", "--ignore-existing", "--numeric-ids",
                *(f"--exclude={path}" for path in EXCLUDED),
                f"{bundle}/rootfs/", f"{merged}/",
            )  # fmt: skip
            started = time.perf_counter()
            content = subprocess.run(
                ["du", "-sm", str(merged)], capture_output=True, text=True, check=True
            )
            counted = subprocess.run(
                ["du", "-s", "--inodes", str(merged)], capture_output=True, text=True, check=True
            )
            lay_over += time.perf_counter() - started
            content_mib = int(content.stdout.split()[0])
            # The same sizes as built_images.install, so both write the same filesystem.
            inodes = int(counted.stdout.split()[0]) + SIZE_MIB * INODES_PER_FREE_MIB + SPARE_INODES
            metadata = max(MIN_METADATA_MIB, int(content_mib * METADATA_SHARE))
            metadata += -(-inodes * INODE_BYTES // (1024 * 1024))
            total_mib = max(MIN_TOTAL_MIB, content_mib + metadata + SIZE_MIB)
            rootfs = work / "rootfs.ext4"
            ext4 = timed(
                "mkfs.ext4", "-q", "-F", "-L", "root", "-N", str(inodes), "-d", str(merged),
                str(rootfs), f"{total_mib}M",
            )  # fmt: skip
            self.record("hand fetch", fetch)
            self.record("hand unpack", unpack)
            self.record("hand filesystem", lay_over + ext4)
            self.record("hand steps", fetch + unpack + lay_over + ext4)
            self.record("hand total", fetch + unpack + lay_over + ext4)
            self.record("hand: filesystem, cp -al + rsync + du", lay_over)
            self.record("hand: filesystem, mkfs.ext4", ext4)
            self.record("hand: image size MiB", total_mib)
            # Work the server does before it marks the job completed, timed apart: the
            # merged tree inside its filesystem step, the layout and bundle after the steps.
            started = time.perf_counter()
            shutil.rmtree(merged)
            self.record("hand: remove merged tree", time.perf_counter() - started)
            started = time.perf_counter()
            shutil.rmtree(layout)
            shutil.rmtree(bundle)
            self.record("hand: remove layout and bundle", time.perf_counter() - started)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------------- VMs

    def first_exec(self, label: str, image_name: str | None) -> None:
        config: dict[str, Any] = {"mem_size_mib": 256, "vcpu_count": 1}
        if image_name is not None:
            config["image_name"] = image_name
        started = time.perf_counter()
        created = self.client.post(
            "/api/v1/vm/new_root", params={"wait_boot": "true"}, json={"vm_config": config}
        )
        assert created.status_code == 201, created.text
        vm_id = created.json()["vm_id"]
        try:
            ran = self.client.post(f"/api/v1/vm/{vm_id}/exec", json=TRUE)
            assert ran.status_code == 200, ran.text
            self.record(label, time.perf_counter() - started)
        finally:
            # One VM at a time: on two cores a second TCG guest slows the one measured.
            self.client.delete(f"/api/v1/vm/{vm_id}").raise_for_status()


def settle() -> None:
    """Write back what earlier builds left dirty (each writes a few hundred MiB), so that
    no build pays for the one before it: that made the second build of a round slower."""
    os.sync()


def timed(*command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def tables(samples: dict[str, list[float]]) -> str:
    def cell(name: str) -> str:
        return f"{median(samples[name]):.2f} s"

    def spread(name: str) -> str:
        return f"{min(samples[name]):.2f} - {max(samples[name]):.2f}"

    rows = [
        ("fetch (`skopeo copy`)", "fetch"),
        ("unpack (`umoci unpack`)", "unpack"),
        ("filesystem (`cp -al`, `rsync`, `du`, `mkfs.ext4 -d`)", "filesystem"),
        ("sum of the steps", "steps"),
        ("total (API: create → `completed` seen)", "total"),
    ]
    lines = [
        "| step | API median | API min - max | by hand median | by hand min - max | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in rows:
        api, hand = f"api {key}", f"hand {key}"
        lines.append(
            f"| {label} | {cell(api)} | {spread(api)} | {cell(hand)} | {spread(hand)} "
            f"| {len(samples[api])} |"
        )
    api_total, hand_total = median(samples["api total"]), median(samples["hand total"])
    overhead = (api_total - hand_total) / hand_total
    lines.append(f"| **overhead** (API total - by hand) / by hand | {overhead:+.1%} | | | | |")
    # Each round builds one image both ways: the median of the rounds' own differences
    # is less shaken by a slow round than the difference of the medians.
    paired = [
        (api - hand) / hand
        for api, hand in zip(samples["api total"], samples["hand total"], strict=True)
    ]
    lines.append(
        f"| overhead, median of the rounds' own | {median(paired):+.1%} "
        f"| {min(paired):+.1%} - {max(paired):+.1%} | | | |"
    )
    lines += ["", "| part | median | min - max | n |", "|---|---:|---:|---:|"]
    parts = [name for name in samples if name.startswith(("api:", "hand:"))]
    for name in parts:
        values = samples[name]
        form, unit = ("{:.0f}", "") if "MiB" in name else ("{:.3f}", " s")
        lines.append(
            f"| {name} | {form.format(median(values))}{unit} "
            f"| {form.format(min(values))} - {form.format(max(values))} | {len(values)} |"
        )
    vms = [name for name in samples if name.startswith("new root")]
    if vms:
        lines += ["", "| measure | median | min - max | n |", "|---|---:|---:|---:|"]
        for name in vms:
            lines.append(f"| {name} | {cell(name)} | {spread(name)} | {len(samples[name])} |")
    return "\n".join(lines)


def cpu_busy(seconds: float) -> float:
    """The share of the machine's CPU time in use over `seconds`, from /proc/stat: other
    sessions' test suites run in namespaces of their own, so `ps` does not show their
    QEMUs, but the kernel's counters include them."""

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # idle + iowait

    total, idle = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    return 1 - (idle_after - idle) / max(total_after - total, 1)


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    qemu = subprocess.run(["pgrep", "-c", "-f", "^qemu-system"], capture_output=True, text=True)
    return (
        f"load {one:.2f}/{five:.2f} (1/5 min), CPU {cpu_busy(5):.0%} busy over 5 s, "
        f"{qemu.stdout.strip() or 0} QEMU processes visible"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--vms", type=int, default=3, help="VMs of each kind")
    args = parser.parse_args()
    ensure_default_image(IMAGES_DIR, lambda line: print(line, file=sys.stderr))
    before = machine_load()
    print(f"before: {before}", file=sys.stderr)
    # Under build/ (not a tmpfs /tmp): the server's builds and the by-hand ones on one disk.
    (REPO / "build").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="image-bench-", dir=REPO / "build"))
    # An images folder of the bench's own, on the shared default image: a server starting
    # on build/images (the test suite's do) removes every `built/.*.partial-*` there as a
    # crash leftover, including a build in progress of another server (it failed a round
    # of this bench). The warm-up extracts this folder's base tree.
    images = scratch / "images"
    images.mkdir()
    (images / "default").symlink_to((IMAGES_DIR / "default").resolve())
    registry = Registry(scratch / "registry")
    backend: Backend | None = None
    server: Server | None = None
    bench: Bench | None = None
    built: list[str] = []
    try:
        registry.start()
        backend = Backend.create(
            "sqlite", scratch / "backend", INSECURE_REGISTRIES=registry.host, IMAGES_DIR=str(images)
        )
        server = Server(backend, scratch / "server.log").start()
        bench = Bench(server, make_key(backend).token, registry, scratch, images)
        # The warm-up also extracts the base tree of the bench's images folder.
        print("warm-up build through the API", file=sys.stderr)
        built.append("bench-warm-up")
        bench.build_via_api(
            "bench-warm-up", bench.new_image("warm-up", args.mib, args.layers), record=False
        )
        assert bench.base_tree.is_dir(), bench.base_tree
        bench.delete_image(built.pop())
        for number in range(args.rounds):
            tag = f"r{number}"
            reference = bench.new_image(tag, args.mib, args.layers)
            # Alternating the order spreads page-cache and noise effects over both.
            for way in ("api", "hand") if number % 2 == 0 else ("hand", "api"):
                if way == "api":
                    built.append(f"bench-{tag}")
                    bench.build_via_api(f"bench-{tag}", reference)
                else:
                    bench.build_by_hand(reference, tag)
            print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
            # Keep the last one for the VMs; the rest only take disk space.
            if number < args.rounds - 1:
                bench.delete_image(built.pop())
        for _ in range(args.vms):
            bench.first_exec("new root from a built image → first exec", built[-1])
            bench.first_exec("new root from the default image → first exec", None)
    finally:
        if bench is not None:
            for name in built:
                try:
                    bench.delete_image(name)
                except (AssertionError, ValueError, httpx.HTTPError) as exc:
                    print(f"could not delete image {name}: {exc}", file=sys.stderr)
            bench.client.close()
        if server is not None and server.process is not None:
            server.stop()
        registry.stop()
        if backend is not None:
            backend.drop()
        shutil.rmtree(scratch, ignore_errors=True)
    after = machine_load()
    print(f"after: {after}", file=sys.stderr)
    print(f"Before: {before}. After: {after}.\n")
    print(tables(bench.samples))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"args": vars(args), "before": before, "after": after, "samples": bench.samples},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
