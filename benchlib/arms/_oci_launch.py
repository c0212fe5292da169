"""Run one command under runc with a bundle whose root is the host's own / (the ``isolated`` arm).

    python _oci_launch.py PLAN_JSON

PLAN_JSON (built by :meth:`benchlib.arms.runc.RuncLauncher.argv`): ``runc`` (binary), ``state_root``,
``bundle`` (folder), ``id``, ``global`` (extra runc options) and ``config`` (the OCI config.json;
``root.path`` is ``rootfs`` inside the bundle).

Steps: remove a stale container of the same ID (an earlier, killed attempt of the same invocation),
write the bundle, then in a child with a private mount namespace bind / (not recursively) onto
``BUNDLE/rootfs`` and exec ``runc run``; SIGTERM/SIGINT/SIGHUP are passed on to runc, which passes
them to the container. When runc returns the bundle is removed (the bind mount dies with the child's
namespace) and its exit status is ours. Standard library only: run by the host's python, by path.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _remove_bundle(bundle: str) -> None:
    # Never a recursive delete: in a namespace that may still live, the host's / is bound on rootfs.
    for action in (lambda: os.unlink(os.path.join(bundle, "config.json")),
                   lambda: os.rmdir(os.path.join(bundle, "rootfs")), lambda: os.rmdir(bundle)):
        try:
            action()
        except OSError:
            pass


def main(plan_json: str) -> int:
    plan = json.loads(plan_json)
    runc, state, bundle, cid = plan["runc"], plan["state_root"], plan["bundle"], plan["id"]
    base = [runc, "--root", state, *plan.get("global", [])]
    os.makedirs(state, mode=0o700, exist_ok=True)
    os.makedirs(os.path.dirname(bundle), mode=0o700, exist_ok=True)
    subprocess.run(base + ["delete", "--force", cid], capture_output=True, check=False, timeout=60)
    _remove_bundle(bundle)
    os.makedirs(os.path.join(bundle, "rootfs"), mode=0o755)
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(plan["config"], handle)
    rootfs = os.path.join(bundle, "rootfs").encode()

    def enter() -> None:  # in the child, before exec: a private mount namespace with / on rootfs
        libc = _libc()
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        _check(libc.mount(b"/", rootfs, None, MS_BIND, None), "bind / on the bundle's rootfs")

    try:
        child = subprocess.Popen(base + ["run", "--bundle", bundle, cid], preexec_fn=enter, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        _remove_bundle(bundle)
        print(f"benchlib isolated launcher: cannot start runc: {exc}", file=sys.stderr)
        return 125

    def forward(signum, _frame) -> None:
        try:
            child.send_signal(signum)
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        code = child.wait()
    finally:
        _remove_bundle(bundle)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
