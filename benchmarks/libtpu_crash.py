"""The smallest program that crashes libtpu 0.0.42 compiling for v6e (docs/tpu.md, "When libtpu crashes").

  PYTHONPATH=. python -m benchmarks.libtpu_crash --case attention --batch 2600    # SIGSEGV (exit 139)
  PYTHONPATH=. python -m benchmarks.libtpu_crash --case attention --batch 2599    # compiles
  PYTHONPATH=. python -m benchmarks.libtpu_crash --case heads_major --batch 4021  # compiles
  PYTHONPATH=. python -m benchmarks.libtpu_crash --case patch_conv --batch 4021   # compiles

Compiles one op of DINOv2-base's towers for a compile-only TPU slice (``--topology``, default v6e:2x4;
nothing runs), ``--batch`` images per chip, the batch sharded over the chips, and prints the compile's
seconds and XLA's peak bytes per chip. ``attention``: one ViT attention as the towers' TPU formulation
computes it (``backends/xla.py``, ``impl="fused"``): the q/k/v projection of [B, T, 768] float32 by a
768x2304 bf16 matrix, q scaled by 1/8, cast to bf16, ``jax.nn.dot_product_attention`` over 12 heads of 64.
``heads_major``: the same with heads-major einsums (the towers' CPU formulation, ``attend_heads_major``).
``patch_conv`` / ``patch_matmul``: the 14x14 patch embedding of 224 px images as a stride-14 convolution /
as the towers compute it (``vit.patch_embed``: reshape and matmul). A crash ends the process (SIGSEGV in
``FusedSpatialMajorConvolution::MakeConvWindows``, a stack overflow of the compiler's fiber thread).
"""

import argparse
import time

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from smartvlm_jax.aot import targets
from smartvlm_jax.towers import vit
from smartvlm_jax.towers.backends import xla

DIM, HEADS, PATCH, PIXELS = 768, 12, 14, 224


def attention(x, w, heads_major: bool):
    b, t, d = x.shape
    y = jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)
    scale = jnp.concatenate([jnp.full((d,), (d // HEADS) ** -0.5), jnp.ones((2 * d,))])
    y = (y * scale).astype(jnp.bfloat16).reshape(b, t, 3, HEADS, d // HEADS)
    if heads_major:
        y = jnp.transpose(y, (2, 0, 3, 1, 4))  # [3, B, H, T, Dh]
        ctx = jnp.transpose(xla.attend_heads_major(y[0], y[1], y[2]), (0, 2, 1, 3))
    else:
        ctx = jax.nn.dot_product_attention(y[:, :, 0], y[:, :, 1], y[:, :, 2], scale=1.0)
    return jnp.mean(ctx.astype(jnp.float32), axis=(1, 2))


def patch_conv(x, w):
    numbers = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        x, w, (PATCH, PATCH), "VALID", dimension_numbers=numbers, preferred_element_type=jnp.float32
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=["attention", "heads_major", "patch_conv", "patch_matmul"])
    parser.add_argument("--batch", type=int, required=True, help="images per chip")
    parser.add_argument("--tokens", type=int, default=257, help="attention: tokens (DINOv2 at 224 px: 257)")
    parser.add_argument("--topology", default="v6e:2x4")
    args = parser.parse_args()
    target = targets.parse(f"tpu:{args.topology}")
    targets.compile_only_environment()
    mesh = Mesh(target.devices(), ("data",))
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    b = args.batch * mesh.devices.size
    bf16 = jnp.bfloat16
    if args.case in ("attention", "heads_major"):
        fn = lambda x, w: attention(x, w, args.case == "heads_major")
        shapes = [((b, args.tokens, DIM), jnp.float32, data), ((DIM, 3 * DIM), bf16, replicated)]
    else:
        fn = (
            patch_conv
            if args.case == "patch_conv"
            else lambda x, w: vit.patch_embed({"kernel": w, "bias": jnp.zeros((DIM,))}, x, PATCH)
        )
        shapes = [((b, PIXELS, PIXELS, 3), bf16, data), ((PATCH, PATCH, 3, DIM), bf16, replicated)]
    structs = [jax.ShapeDtypeStruct(s, d, sharding=sh) for s, d, sh in shapes]
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*structs).compile()
    peak = compiled.memory_analysis().peak_memory_in_bytes
    print(
        f"{args.case} on {args.topology}, {args.batch} per chip: compiled in "
        f"{time.perf_counter() - start:.1f} s, peak {peak / 2**30:.2f} GiB per chip"
    )


if __name__ == "__main__":
    main()
