"""Stand-in for the ``adb`` executable, for tests. Copied onto PATH as ``adb``.

Behaves like adb for the subcommands the Android runner uses (devices, -s SERIAL, shell, push,
getprop) against a fake device described by $FAKE_ADB_STATE/config.json::

    {"devices": [["SERIAL", "device"]], "props": {"ro.product.model": "Pixel 8"},
     "freqs": {"0": 1700000, ..., "8": 3000000}, "outputs": {"benchmark_model": "path/to/sample.txt"}}

Pushed files are recorded under $FAKE_ADB_STATE/fs/, every shell command in $FAKE_ADB_STATE/commands.log.
"""

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

state = Path(os.environ["FAKE_ADB_STATE"])
cfg = json.loads((state / "config.json").read_text())
fs = state / "fs"
fs.mkdir(exist_ok=True)
args = sys.argv[1:]


def fail(msg: str, code: int = 1) -> None:
    sys.stderr.write(msg + "\n")
    sys.exit(code)


serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]

if args[:1] == ["devices"]:
    print("List of devices attached")
    for s, st in cfg["devices"]:
        print(f"{s}\t{st}")
    print()
    sys.exit(0)

ready = [s for s, st in cfg["devices"]]
if serial is None:
    if not ready:
        fail("adb: no devices/emulators found")
    if len(ready) > 1:
        fail("adb: more than one device/emulator")
    serial = ready[0]
if serial not in ready:
    fail(f"adb: device '{serial}' not found")
if dict(cfg["devices"])[serial] != "device":
    fail("adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set")


def local(remote: str) -> Path:
    return fs / remote.lstrip("/")


if args[:1] == ["push"]:
    src, dst = Path(args[1]), args[2]
    if not src.exists():
        fail(f"adb: error: cannot stat '{src}': No such file or directory")
    local(dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, local(dst))
    size = src.stat().st_size
    print(f"{src}: 1 file pushed, 0 skipped. 120.5 MB/s ({size} bytes in 0.001s)")
    sys.exit(0)

if args[:1] != ["shell"]:
    fail(f"adb: unknown command {' '.join(args)}")

command = " ".join(args[1:])
with (state / "commands.log").open("a") as log:
    log.write(command + "\n")
words = shlex.split(command)
if words[0] == "getprop":
    print(cfg["props"].get(words[1], ""))
elif "cpuinfo_max_freq" in command:
    for cpu, khz in sorted(cfg["freqs"].items(), key=lambda kv: int(kv[0])):
        print(cpu, khz)
elif words[0] == "mkdir":
    local(words[-1]).mkdir(parents=True, exist_ok=True)
elif words[0] == "chmod":
    pass
elif words[0] == "ls":
    if not local(words[1]).exists():
        print(f"ls: {words[1]}: No such file or directory")
        sys.exit(1)
    print(words[1])
elif words[0] == "taskset":
    tool = words[2]
    if not local(tool).exists():
        print(f"/system/bin/sh: {tool}: inaccessible or not found")
        sys.exit(127)
    model = next(w.split("=", 1)[1] for w in words if w.startswith(("--graph=", "--model_path=")))
    if not local(model).exists():
        sys.stdout.write(Path(cfg["outputs"]["missing_model"]).read_text())
        sys.exit(1)
    sys.stdout.write(Path(cfg["outputs"][Path(tool).name]).read_text())
else:
    fail(f"/system/bin/sh: {words[0]}: inaccessible or not found", 127)
