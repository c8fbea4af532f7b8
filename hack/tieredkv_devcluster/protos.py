"""Regenerates the agent's gRPC code from the vendored .proto files (`make protos`).

The generated modules are committed (the agent image needs no compiler); a unit test runs `generate` into a
scratch directory and fails when the bytes differ from the committed ones. protoc runs with the agent's
source root as include path, so the modules import each other as `tieredkv_agent.csi.proto.*`.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_PACKAGE = Path("tieredkv_agent") / "csi" / "proto"
PROTOS = ("csi.proto", "pluginregistration.proto")


def generate(source_root: Path, out_root: Path) -> list[Path]:
    """protoc over each vendored proto under `source_root`, writing into `out_root`; the files it wrote."""
    well_known = resources.files("grpc_tools") / "_proto"
    (out_root / PROTO_PACKAGE).mkdir(parents=True, exist_ok=True)
    written = []
    for name in PROTOS:
        rel = PROTO_PACKAGE / name
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{source_root}",
                f"-I{well_known}",
                f"--python_out={out_root}",
                f"--pyi_out={out_root}",
                f"--grpc_python_out={out_root}",
                str(rel),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {rel} (exit {rc})")
        stem = name.removesuffix(".proto")
        written += [out_root / PROTO_PACKAGE / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES]
    return written


GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def main() -> int:
    root = Path(__file__).resolve().parents[2] / "agent"
    for path in generate(root, root):
        print(path.relative_to(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
