"""The minimal sandbox ("pause") image the agent builds itself when none can be pulled.

A sandbox only has to exist and sleep so its namespaces outlive app-container restarts. Rather
than depend on a registry or on a host binary, we emit a ~130-byte static ELF whose whole
program is ``for (;;) pause();`` and package it as a one-file image tarball for
``docker import``. PID 1 in a container ignores signals without handlers, so the sandbox is
always removed with SIGKILL (force-remove), which is what we do.
"""

from __future__ import annotations

import io
import platform
import struct
import tarfile

from agent.errors import RuntimeOperationError

_LOAD_ADDRESS = 0x400000
_ELF_HEADER_BYTES = 64
_PROGRAM_HEADER_BYTES = 56

# x86_64: loop: mov eax, 34 (SYS_pause); syscall; jmp loop
_CODE_X86_64 = bytes.fromhex("b8220000000f05ebf7")
# aarch64 has no pause(2): loop: ppoll(NULL, 0, NULL, NULL) (x8 = 73); b loop
_CODE_AARCH64 = struct.pack(
    "<7I",
    0xD2800000,  # mov x0, #0
    0xD2800001,  # mov x1, #0
    0xD2800002,  # mov x2, #0
    0xD2800003,  # mov x3, #0
    0xD2800928,  # mov x8, #73
    0xD4000001,  # svc #0
    0x17FFFFFA,  # b -6 instructions
)
_MACHINES = {"x86_64": (0x3E, _CODE_X86_64), "aarch64": (0xB7, _CODE_AARCH64)}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

PAUSE_PATH = "/pause"


def pause_elf(machine: str | None = None) -> bytes:
    """A static ELF executable for ``machine`` (default: this host) that pauses forever."""
    arch = machine or platform.machine()
    arch = _MACHINE_ALIASES.get(arch, arch)
    if arch not in _MACHINES:
        raise RuntimeOperationError(
            f"cannot build the sandbox image for architecture {arch!r}; "
            f"configure sandbox_image with an image available locally"
        )
    e_machine, code = _MACHINES[arch]
    entry = _LOAD_ADDRESS + _ELF_HEADER_BYTES + _PROGRAM_HEADER_BYTES
    total = _ELF_HEADER_BYTES + _PROGRAM_HEADER_BYTES + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        ident,
        2,  # ET_EXEC
        e_machine,
        1,
        entry,
        _ELF_HEADER_BYTES,  # program headers follow the ELF header
        0,
        0,
        _ELF_HEADER_BYTES,
        _PROGRAM_HEADER_BYTES,
        1,
        0,
        0,
        0,
    )
    program_header = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        5,  # R + X
        0,
        _LOAD_ADDRESS,
        _LOAD_ADDRESS,
        total,
        total,
        0x1000,
    )
    return header + program_header + code


def pause_rootfs_tar(machine: str | None = None) -> bytes:
    """A tarball holding only ``/pause``, ready for ``docker import``."""
    elf = pause_elf(machine)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(PAUSE_PATH.lstrip("/"))
        info.size = len(elf)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(elf))
    return buf.getvalue()
