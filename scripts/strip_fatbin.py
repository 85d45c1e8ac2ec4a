#!/usr/bin/env python3
"""Zeroes, in place, the GPU code a CUDA library carries for the architectures a device
will never load, so that the library compresses to a fraction of its size.

    scripts/strip_fatbin.py LIB.so --keep-sm 90 [--dry-run]
    scripts/strip_fatbin.py --self-test

A CUDA shared library keeps its device code in the ELF section `.nv_fatbin`: a run of
fatbin containers, each a 16-byte header (magic 0xBA55ED50, u16 version, u16 header
size, u64 size of the entries that follow) and its entries, each with its own header
(u16 kind: 1 = PTX, 2 = ELF cubin; u16; u32 header size; u64 payload size; u32
compressed size; u32; u16 minor, u16 major; u32 sm arch; ...) and then its payload.
This layout is NVIDIA's `fatbinary_section.h` / `fatBinaryHeader` as the open parsers
read it (n-eiling/cuda-fatbin-decompression `fatbin-decompress.h`, the Kaitai `fatbin`
description). A device of compute capability 9.0 loads the sm_90 cubin of a kernel (a
cubin of another major version never runs on it), so the payloads of the other cubins
are dead weight there. Headers, PTX and every byte outside those payloads stay as they
were: offsets, sizes and the section table do not move. Whether the driver accepts the
result is for the device to prove (the plan keeps the full library as its fallback).

Prints one line per architecture (entries, bytes kept or zeroed) and exits 1 when the
file has no `.nv_fatbin` section or a container does not parse.
"""
import argparse
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50
KIND_ELF = 2


class FormatError(Exception):
    pass


def section(data, name):
    """(offset, size) of the ELF64 little-endian section `name`."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise FormatError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for h in headers:
        start = names_at + h[0]
        if data[start:data.index(b"\0", start)].decode() == name:
            return h[4], h[5]
    raise FormatError(f"no {name} section")


def entries(data, start, end):
    """Yields (kind, sm arch, payload offset, payload size) for every fatbin entry."""
    pos = start
    while pos + 16 <= end:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            if data[pos:pos + 8] == b"\0" * 8:  # padding between containers
                pos += 8
                continue
            raise FormatError(f"no fatbin magic at offset {pos:#x}")
        entry, stop = pos + header_size, pos + header_size + fat_size
        if stop > end:
            raise FormatError(f"container at {pos:#x} runs past the section")
        while entry < stop:
            kind, _, eh_size, size = struct.unpack_from("<HHIQ", data, entry)
            arch, = struct.unpack_from("<I", data, entry + 28)
            if eh_size == 0 or entry + eh_size + size > stop:
                raise FormatError(f"entry at {entry:#x} does not fit its container")
            yield kind, arch, entry + eh_size, size
            entry += eh_size + size
        pos = stop


def strip(data, keep_sm):
    """Zeroes the ELF payloads of other archs in `data` (a bytearray); returns per-arch
    {arch: [entries, bytes, zeroed?]}."""
    start, size = section(data, ".nv_fatbin")
    seen = {}
    for kind, arch, at, length in list(entries(data, start, start + size)):
        label = f"sm_{arch}" if kind == KIND_ELF else f"ptx_{arch}"
        drop = kind == KIND_ELF and arch != keep_sm
        row = seen.setdefault(label, [0, 0, drop])
        row[0] += 1
        row[1] += length
        if drop:
            data[at:at + length] = bytes(length)
    return seen


def self_test():
    """A synthetic ELF with one container of an sm_80 and an sm_90 cubin and a PTX."""
    def entry(kind, arch, payload):
        head = struct.pack("<HHIQIIHHI", kind, 0x101, 64, len(payload), 0, 0, 0, 0, arch)
        return head + bytes(64 - len(head)) + payload
    body = entry(2, 80, b"\xa1" * 24) + entry(2, 90, b"\xb2" * 16) + entry(1, 90, b"\xc3" * 8)
    fatbin = struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body
    names = b"\0.shstrtab\0.nv_fatbin\0"
    blob = bytearray(64) + fatbin + names
    shoff = len(blob)
    sh = lambda name, off, size: struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 8, 0)
    blob += sh(0, 0, 0) + sh(1, 64 + len(fatbin), len(names)) + sh(11, 64, len(fatbin))
    blob[0:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", blob, 0x28, shoff)
    struct.pack_into("<HHH", blob, 0x3A, 64, 3, 1)
    seen = strip(blob, 90)
    assert seen == {"sm_80": [1, 24, True], "sm_90": [1, 16, False], "ptx_90": [1, 8, False]}, seen
    assert b"\xa1" not in blob and blob.count(b"\xb2") == 16 and blob.count(b"\xc3") == 8
    print("strip_fatbin self-test: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lib", nargs="?")
    ap.add_argument("--keep-sm", type=int, default=90)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.lib:
        ap.error("LIB is required")
    with open(args.lib, "rb") as f:
        data = bytearray(f.read())
    try:
        seen = strip(data, args.keep_sm)
    except FormatError as e:
        sys.exit(f"strip_fatbin: {args.lib}: {e}")
    for label, (n, size, drop) in sorted(seen.items()):
        print(f"{label:>8}: {n:4} entries {size / 1e6:8.1f} MB {'zeroed' if drop else 'kept'}")
    if not args.dry_run:
        with open(args.lib, "r+b") as f:
            f.write(data)


if __name__ == "__main__":
    main()
