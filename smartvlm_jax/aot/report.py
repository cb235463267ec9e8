"""What each program of a run needs on its target, the largest batch that fits, and what the run will cost.

Per program and per device: argument, output, temporary and peak bytes (XLA's ``memory_analysis``) against
the chip's HBM; FLOPs and bytes accessed (``cost_analysis``; where the compiled program has none, as on
the compile-only GPU client, the lowered program's whole-mesh counts divided by the devices); a roofline
time, max(FLOPs / peak FLOP/s, bytes / HBM bandwidth), from the chip's published figures; compile seconds.
Peak bytes are XLA's own peak (buffers live at once), which is not arguments plus temporaries: both are
reported. The largest batch is found by compiling (:func:`largest_batch`), the run's time from the split
sizes and the roofline times (:func:`run_estimate`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from smartvlm_jax.aot.programs import Plan, Program
from smartvlm_jax.aot.targets import GIB, Chip

# Custom-call targets that exist only on XLA:CPU: this package's oneDNN kernels, XLA's own oneDNN and
# YNNPACK fusions. None may appear in a program compiled for a TPU or GPU.
CPU_CUSTOM_CALL = re.compile(r"smartvlm_onednn|onednn|__xla_cpu|xla_cpu|ynn", re.IGNORECASE)
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
# TPU: "... Used 16.65G of 15.75G hbm" / "(16.65G) exceeds available HBM (15.75G)" in RESOURCE_EXHAUSTED
_NEEDS = re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class DoesNotFit(ValueError):
    """A program of the run needs more memory per chip than the target has (the message gives figures)."""


@dataclasses.dataclass
class Compiled:
    """One compile of a program at a per-device ``batch``: its figures per device (bytes, FLOPs, seconds).
    ``ok`` False: the compiler refused it for memory (``error`` quotes it; ``peak_bytes`` is what the
    compiler said it needed, when it said), or its compile killed the child process it ran in (``crashed``
    names the signal, e.g. "SIGSEGV"; :mod:`smartvlm_jax.aot.child`)."""

    batch: int
    ok: bool
    compile_s: float
    argument_bytes: int = 0
    output_bytes: int = 0
    temp_bytes: int = 0
    alias_bytes: int = 0
    peak_bytes: int = 0
    flops: float = 0.0
    bytes_accessed: float = 0.0
    flops_source: str = ""
    error: str = ""
    available_bytes: int = 0  # the compiler's own HBM limit, when its refusal named it
    crashed: str = ""  # the signal that ended the compile's child process ("": it did not crash)
    custom_calls: list[str] = dataclasses.field(default_factory=list)
    hlo: str = dataclasses.field(default="", repr=False)

    @property
    def cpu_custom_calls(self) -> list[str]:
        return [c for c in self.custom_calls if CPU_CUSTOM_CALL.search(c)]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("hlo")
        return out


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def _cost(compiled, lowered, num_devices: int) -> tuple[float, float, str]:
    """(FLOPs, bytes accessed, source) per device: the compiled program's, else the lowered one's / n."""
    cost = compiled.cost_analysis() if hasattr(compiled, "cost_analysis") else None
    if cost and cost.get("flops"):
        return float(cost["flops"]), float(cost.get("bytes accessed", 0.0)), "compiled"
    cost = lowered.cost_analysis() or {}
    n = max(num_devices, 1)
    source = "lowered/devices"
    if not cost.get("flops"):  # the compile-only GPU client has none: XLA's HLO cost analysis, on the CPU
        cost, source = hlo_cost_on_cpu(lowered), "lowered HLO on CPU/devices"
        fused = optimized_bytes_on_cpu(compiled)
        if fused:  # the unfused HLO counts every op's operands: many times the fused program's traffic
            return float(cost.get("flops", 0.0)) / n, fused, f"{source}; bytes: optimized HLO on CPU"
    return float(cost.get("flops", 0.0)) / n, float(cost.get("bytes accessed", 0.0)) / n, source


# "%name = <shape or (tuple)> opcode(%a, %b), ..." in an HLO module's text; operands are named, not shaped
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\(([^)]*)\)", re.MULTILINE)
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "bf16": 2}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        if dtype == "s8":  # a library call's scratch workspace (cuBLAS), not data it reads
            continue
        size = _DTYPE_BYTES.get(dtype) or max(int(re.sub(r"\D", "", dtype) or 8) // 8, 1)
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size
    return total


def optimized_bytes_on_cpu(compiled) -> float:
    """Bytes accessed per device by the optimized (partitioned, fused) program: XLA's HloCostAnalysis of
    the compiled module, run by the CPU client, plus the operands and results of its library calls
    (cuBLAS GEMMs, cuDNN attention), which that analysis counts as nothing. 0 where there is no module."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    try:
        modules = compiled.runtime_executable().hlo_modules()
    except Exception:  # an executable without modules: no figure
        return 0.0
    total = 0.0
    for module in modules:
        cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
        total += float(cost.get("bytes accessed", 0.0))
        instructions = _INSTRUCTION.findall(module.to_string())
        shapes = {name: shape for name, shape, _, _ in instructions}
        for _, shape, opcode, operands in instructions:
            if opcode == "custom-call":
                names = [o.strip().lstrip("%") for o in operands.split(",") if o.strip()]
                total += _shape_bytes(shape) + sum(_shape_bytes(shapes.get(o, "")) for o in names)
    return total


def hlo_cost_on_cpu(lowered) -> dict[str, float]:
    """XLA's HloCostAnalysis of ``lowered``'s whole-mesh HLO (before partitioning and fusion), run by the
    CPU client: FLOPs of dots, convolutions and elementwise ops and bytes accessed; a custom call (cuDNN
    attention) counts none. {} where the lowering has no HLO."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    try:
        module = lowered._lowering.hlo().as_hlo_module()  # jax 0.10: no public HLO-module accessor
    except AttributeError:
        return {}
    return dict(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module))


def compile_at(
    program: Program, batch: int, num_devices: int, keep_hlo: bool = False, options: dict | None = None
) -> Compiled:
    """Lower and compile ``program`` at per-device ``batch`` (with XLA ``options``, the target's
    ``compiler_options``) and read its figures. A compiler refusal for memory (RESOURCE_EXHAUSTED) is
    returned as ``ok=False``; any other error propagates."""
    start = time.perf_counter()
    lowered = program.lower(batch)
    try:
        compiled = lowered.compile(options or None)
    except Exception as e:  # XLA raises its own runtime error type; only out-of-memory is an answer
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "exceeds available" not in text:
            raise
        found = _NEEDS.search(text)
        out = Compiled(batch, False, time.perf_counter() - start, error=text.strip().splitlines()[0][:400])
        if found:
            out.peak_bytes = _bytes(*found.group(1, 2))
            out.available_bytes = _bytes(*found.group(3, 4))
        return out
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    flops, accessed, source = _cost(compiled, lowered, num_devices)
    hlo = compiled.as_text() or ""
    args, out_b, temp = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes
    peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0) or args + out_b + temp - mem.alias_size_in_bytes
    return Compiled(
        batch,
        True,
        seconds,
        argument_bytes=int(args),
        output_bytes=int(out_b),
        temp_bytes=int(temp),
        alias_bytes=int(mem.alias_size_in_bytes),
        peak_bytes=int(peak),
        flops=flops,
        bytes_accessed=accessed,
        flops_source=source,
        custom_calls=sorted(set(_CUSTOM_CALL.findall(hlo))),
        hlo=hlo if keep_hlo else "",
    )


def fits(c: Compiled, chip: Chip) -> bool:
    """Compiled, and its peak within the chip's HBM (a CPU target has no HBM figure: compiled is enough)."""
    return c.ok and (chip.hbm_bytes <= 0 or c.peak_bytes <= chip.hbm_bytes)


def roofline_s(c: Compiled, chip: Chip) -> float:
    """max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth): seconds per call per device (0: none)."""
    if chip.peak_flops <= 0 or chip.hbm_bandwidth <= 0 or not c.ok:
        return 0.0
    return max(c.flops / chip.peak_flops, c.bytes_accessed / chip.hbm_bandwidth)


def _linear_guess(results: Mapping[int, Compiled], limit: float) -> int | None:
    """The batch where a line through the two largest batches with a peak figure reaches ``limit``."""
    known = sorted((b, c.peak_bytes) for b, c in results.items() if c.peak_bytes > 0)
    if len(known) < 2:
        return None
    (b1, p1), (b2, p2) = known[-2], known[-1]
    slope = (p2 - p1) / (b2 - b1)
    if slope <= 0:
        return None
    return int(b1 + (limit - p1) // slope)


def largest_batch(
    compile_fn: Callable[[int], Compiled], first: Compiled, chip: Chip, budget: int = 6
) -> tuple[int, dict[int, Compiled]]:
    """The largest per-device batch found to fit in ``budget`` compiles (``first`` included): a line
    through the peaks seen so far guesses where the HBM is reached, doubling or halving until the answer
    is bracketed, then bisection. A compile that crashed (``Compiled.crashed``) counts as a batch that
    does not fit: what the search returns is then the largest that fitted below it, a floor. Returns
    (batch, every compile by batch); 0 when none fitted."""
    results = {first.batch: first}
    limit = chip.hbm_bytes or float(first.available_bytes)

    def probe(b: int) -> bool:
        if b not in results:
            results[b] = compile_fn(b)
        return fits(results[b], chip)

    lo, hi = (first.batch, None) if probe(first.batch) else (0, first.batch)
    while len(results) < budget and (hi is None or hi - lo > 1):
        guess = _linear_guess(results, limit) if limit > 0 else None
        if hi is None:
            b = min(max(guess or 2 * lo, 2 * lo), 1024 * lo)
        else:
            if guess is None and results[hi].peak_bytes > limit > 0:  # one figure: scale the batch down
                guess = int(hi * 0.95 * limit / results[hi].peak_bytes)
            b = guess if guess is not None and lo < guess < hi else (lo + hi) // 2
            b = b if lo < b < hi else (lo + hi) // 2
        if b in results:  # the line keeps pointing at a known batch: bisect instead
            b = (lo + hi) // 2 if hi is not None else 2 * lo
        if probe(b):
            lo = b
        else:
            hi = b
    return lo, results


@dataclasses.dataclass
class ProgramReport:
    """A program's figures at the run's batch, its largest fitting batch and roofline seconds per call."""

    name: str
    description: str
    at_batch: Compiled
    max_batch: int  # per device (0: none fits; -1: not searched)
    search: list[Compiled]
    roofline_s: float
    fits: bool

    @property
    def crash(self) -> str:
        """'' or the search's compiler crash and the floor it leaves, e.g. "libtpu crashed (SIGSEGV)
        compiling towers at batch 32 per chip; largest that fitted: 16"."""
        crashed = [c for c in self.search if c.crashed]
        if not crashed:
            return ""
        also = f" (also at batch {', '.join(str(c.batch) for c in crashed[1:])})" if crashed[1:] else ""
        return f"{crashed[0].error}{also}; largest that fitted: {max(self.max_batch, 0)}"

    def to_json(self, chip: Chip, devices: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "per_device_batch": self.at_batch.batch,
            "global_batch": self.at_batch.batch * devices,
            "fits": self.fits,
            "hbm_bytes": chip.hbm_bytes,
            **self.at_batch.to_json(),
            "cpu_custom_calls": self.at_batch.cpu_custom_calls,
            "roofline_s": self.roofline_s,
            "max_per_device_batch": self.max_batch,
            "max_global_batch": self.max_batch * devices if self.max_batch > 0 else self.max_batch,
            "search": [
                {
                    "batch": c.batch,
                    "ok": c.ok,
                    "peak_bytes": c.peak_bytes,
                    "crashed": c.crashed,
                    "compile_s": c.compile_s,
                }
                for c in self.search
            ],
            "search_crash": self.crash,
        }


def analyse(
    plan: Plan,
    search_budget: int = 6,
    keep_hlo: bool = False,
    compile_search: Callable[[Program, int], Compiled] | None = None,
) -> list[ProgramReport]:
    """Compile every program of ``plan`` at its batch, and (``search_budget`` > 1) search its largest
    fitting batch in at most that many compiles, each by ``compile_search(program, batch)`` (default:
    :func:`compile_at` in this process; :func:`child.compile_in_child` survives a compiler crash)."""
    chip, n, options = plan.target.chip, plan.mesh.devices.size, plan.target.compiler_options
    if compile_search is None:
        compile_search = lambda p, b: compile_at(p, b, n, options=options)
    out = []
    for program in plan.programs:
        first = compile_at(program, program.batch, n, keep_hlo, options)
        max_batch, search = -1, [first]
        if search_budget > 1:
            max_batch, found = largest_batch(
                lambda b, p=program: compile_search(p, b), first, chip, search_budget
            )
            search = [found[b] for b in sorted(found)]
        out.append(
            ProgramReport(
                program.name,
                program.description,
                first,
                max_batch,
                search,
                roofline_s(first, chip),
                fits(first, chip),
            )
        )
    return out


def run_estimate(plan: Plan, reports: list[ProgramReport]) -> dict[str, Any]:
    """Seconds of the run on the target from the roofline times: extraction (every row through the towers
    once, at the extraction batch), training (the epochs' train steps) and evaluation (val each epoch, test
    once); chip-hours; and tower passes, ours (each image once) beside the reference design's (the towers
    in every step: every epoch's train and val rows, and the test rows)."""
    by_name = {r.name: r for r in reports}
    rows = plan.rows
    total_rows = sum(rows.values())
    train_prog = by_name.get("train_step") or by_name.get("member_step")
    calls = {
        "extraction": math.ceil(total_rows / plan.eval_batch_size),
        "train": plan.num_epochs * math.ceil(rows["train"] / plan.batch_size),
        "eval": plan.num_epochs * math.ceil(rows["val"] / plan.eval_batch_size)
        + math.ceil(rows["test"] / plan.eval_batch_size),
    }
    seconds = {
        "extraction": calls["extraction"] * by_name["towers"].roofline_s,
        "train": calls["train"] * train_prog.roofline_s,
        "eval": calls["eval"] * by_name["eval_step"].roofline_s,
    }
    seconds["total"] = sum(seconds.values())
    devices = plan.mesh.devices.size
    tower_s = by_name["towers"].roofline_s
    return {
        "rows": dict(rows),
        "epochs": plan.num_epochs,
        "calls": calls,
        "seconds": seconds,
        "chip_hours": seconds["total"] * devices / 3600,
        "extraction_images_per_s": plan.eval_batch_size / tower_s if tower_s else 0.0,
        "train_steps_per_s": 1 / train_prog.roofline_s if train_prog.roofline_s else 0.0,
        "tower_passes": total_rows,
        "reference_tower_passes": plan.num_epochs * (rows["train"] + rows["val"]) + rows["test"],
    }


def refusal(plan: Plan, reports: list[ProgramReport]) -> str:
    """'' when every program fits, else one line per program that does not, with its figures."""
    chip, n = plan.target.chip, plan.mesh.devices.size
    lines = []
    for r in reports:
        if r.fits:
            continue
        c = r.at_batch
        hbm = c.available_bytes or chip.hbm_bytes
        needs = f"needs {c.peak_bytes / GIB:.2f} GiB per chip" if c.peak_bytes else "does not fit"
        field = (
            "--config.batch_size" if r.name in ("train_step", "member_step") else "--config.eval_batch_size"
        )
        if r.max_batch > 0:
            largest = f"the largest {field} that fits is {r.max_batch * n} ({r.max_batch} per chip)"
        elif r.max_batch == 0:
            tried = min(x.batch for x in r.search) * n
            largest = f"none fitted down to {field}={tried} (with large towers, --config.towers.fsdp=True)"
        else:
            largest = "search off"
        if r.crash:
            largest += f" ({r.crash})"
        lines.append(
            f"{r.name} {needs} on {plan.target.text} (HBM {hbm / GIB:.2f} GiB) at {field}={c.batch * n}; "
            f"{largest}"
        )
    return "\n".join(lines)
