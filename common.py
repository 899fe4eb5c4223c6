"""
What the scripts share, so none of them copies it: for the three training scripts (train.py, sft.py, rlhf.py)
device and precision, torchrun/DDP set-up, the learning-rate schedule and the one-line step log; for every
script (arena.py and export.py too) one-line errors and the report card (out/report.md + out/report.json) that
every stage writes its exam into.

Not a framework: plain functions; each public one used by at least two scripts.
"""
import argparse
import contextlib
import ctypes
import datetime
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

import world as world_lib
from model import ContextError, generate_many, peek_checkpoint
from tokenizer import render_chat

STAGE_ORDER = ["pretrain", "sft", "rm", "rlhf", "runtime", "arena"]


def keep_freed_memory():
    """Ask glibc to keep freed memory instead of returning it to the OS. PyTorch on CPU has no caching
    allocator: every step frees and re-allocates the same big activations (the 2048 x 32000 logits of the
    15M shape are 262 MB), and glibc serves blocks that large with fresh mmaps that page-fault on first
    touch. Measured at llama2.c's 15M shape on 2 cores: 744 -> 1231 tokens/s. No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: serve big blocks from the heap, which is reused
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: do not give the heap's top back after each step
    except (OSError, AttributeError):
        pass


def pick_device(name):
    """The device to run on; ValueError for one this machine does not have (before any work is done)."""
    if name != "auto":
        try:
            kind, index = torch.device(name).type, torch.device(name).index
        except RuntimeError:
            raise ValueError(f"--device {name}: not a device (cpu, cuda, cuda:1, mps or auto)") from None
        if kind == "cuda" and (not torch.cuda.is_available() or (index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"--device {name}: this machine's PyTorch sees {torch.cuda.device_count()} CUDA "
                             f"device(s){'' if torch.cuda.is_available() else ' (a CPU-only build, or no driver)'}")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {name}: MPS is not available here")
        if kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"--device {name}: twofiles runs on cpu, cuda or mps")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def bounded_int(lo, hi):
    """An argparse type: an int in lo..hi, else argparse's one-line usage error. A seed or a thread count past
    what torch takes (a 64-bit seed, which rlhf.py and sft.py also multiply by 100,003; a 32-bit thread count)
    overflowed inside it, as a traceback."""
    def parse(text):
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi} (got {value})")
        return value
    parse.__name__ = "int"  # what argparse calls the type when the text is not a number
    return parse


SEED, THREADS = bounded_int(0, 2**32 - 1), bounded_int(0, 4096)


def add_system_args(p, dtype=True):
    """--device, --threads (and --dtype): the same flags with the same meaning in every training script."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--threads", type=THREADS, default=0, help="CPU threads (0: one per core; 1 when another run "
                   "shares the machine)")
    if dtype:
        # no float16: it needs loss scaling (a GradScaler) to keep small gradients from underflowing, which
        # the loops do not do; bfloat16 has float32's exponent range and needs none
        p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                       help="autocast precision on CUDA (auto: bfloat16 on a GPU that has it in hardware, Ampere "
                            "on, else float32; float32 matmuls run in TF32 there). CPU and MPS train in float32")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, except where the default is None or "": those flags say in their own
    words what happens without them (filled from a preset, read from a file, no tag), not "(default: None)"."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, "") else super()._get_help_string(action)


def check_ranges(parser, args, at_least_1=(), at_least_0=(), positive=(), below_1=(), fractions=(), people=()):
    """Numbers out of range stop here, before any work, with argparse's one-line usage error, instead of as a
    traceback from deep inside (torch's "Invalid learning rate", an empty batch's stack). Names are argument
    dests; a None value (a default filled in later) is skipped. below_1: 0 <= value < 1 (rates); fractions:
    0 <= value <= 1; people: a world size world.py can draw. Every value must also be finite (--epochs inf
    would run forever, --kl-coef inf is nan) and at most 1e30 in size: the weights are float32, whose range ends
    at 3.4e38 (--lr 1e38 overflowed inside AdamW, whose first step is lr / 0.1 on a float32 weight)."""
    rules = ([(n, lambda v: v >= 1, "at least 1") for n in at_least_1] +
             [(n, lambda v: v >= 0, "at least 0") for n in at_least_0] +
             [(n, lambda v: v > 0, "positive") for n in positive] +
             [(n, lambda v: 0 <= v < 1, "in [0, 1)") for n in below_1] +
             [(n, lambda v: 0 <= v <= 1, "in [0, 1]") for n in fractions] +
             [(n, lambda v: 2 <= v <= world_lib.MAX_PEOPLE, f"in 2..{world_lib.MAX_PEOPLE}") for n in people])
    for name, ok, what in rules:
        value = getattr(args, name)
        if value is not None and not (ok(value) and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be {what} (got {value})")
        if value is not None and abs(value) > 1e30:
            parser.error(f"--{name.replace('_', '-')} {value} is beyond 1e30 (float32 weights end at 3.4e38)")


def check_writable(directory):
    """Make `directory` and write a file in it, or stop with one line before any work: a folder that cannot be
    written was found only when the first checkpoint was saved, after the training it held was done."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        fail(f"cannot write to {directory}: {e.strerror or e}")


def torchrun_env():
    """(world size, rank, local rank) as torchrun puts them in each process's environment; (1, 0, 0) without it."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def start(args):
    """What every training script does first, from add_system_args' flags: keep freed memory, set the CPU
    threads, pick the device and the precision. Returns (device, dtype); dtype is float32 without --dtype.

    --threads: give each run 1 when two share a 2-core machine: OpenMP threads spin while they wait, and two
    runs of 2 threads each slowed each other 5-17x here. 0 keeps PyTorch's default, one per core."""
    keep_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        fail(e)
    dtype = getattr(args, "dtype", "float32")
    if dtype == "bfloat16" and not device.startswith("cuda"):
        print(f"note: --dtype bfloat16 autocasts on CUDA only; on {device} this run trains in float32", file=sys.stderr)
    if dtype == "auto":  # bf16 where the GPU has it in hardware (Ampere on); older ones emulate it, slower than fp32
        gpu, (world_size, _, local_rank) = device, torchrun_env()
        if device == "cuda" and world_size > 1 and local_rank < torch.cuda.device_count():
            gpu = f"cuda:{local_rank}"  # under torchrun, this process's own GPU (where Dist puts it), not GPU 0
        dtype = "bfloat16" if device.startswith("cuda") and bf16_in_hardware(gpu) else "float32"
    elif not device.startswith("cuda"):
        dtype = "float32"
    if device.startswith("cuda"):  # float32 matmuls in TF32 on Ampere on (what nanoGPT does): 10-bit mantissa
        torch.set_float32_matmul_precision("high")  # products, fp32 sums, several times faster than full fp32
    return device, dtype


def bf16_in_hardware(device):
    """Whether this CUDA device (cuda:1 is not always like cuda:0) computes bfloat16 itself (Ampere on)."""
    with torch.cuda.device(device):  # torch.cuda.is_bf16_supported asks about the current device
        return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast(device, dtype):
    """bf16 autocast on CUDA (matmuls in half precision, weights and optimizer state in fp32);
    plain fp32 elsewhere. dtype is 'float32' or 'bfloat16'."""
    if dtype == "float32" or not device.startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, dtype))


class Dist:
    """This process's place under torchrun (RANK/WORLD_SIZE in the environment), or a single process."""

    def __init__(self, device):
        self.world_size, self.rank, self.local_rank = torchrun_env()
        self.enabled = self.world_size > 1
        self.device = device
        if self.enabled:
            if device.startswith("mps"):  # gloo moves CPU and CUDA tensors only, and nccl is CUDA's
                fail("torchrun needs CUDA (nccl) or the CPU (gloo): no PyTorch backend moves MPS tensors; "
                     "use one process on mps, or --device cpu")
            backend = "nccl" if device.startswith("cuda") else "gloo"
            # the master may prepare the data (tokenizer, token files) while the others wait at a barrier: NCCL's
            # default timeout of 10 minutes is short for a large --data, so allow an hour
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=1))
            if device.startswith("cuda"):
                if self.local_rank >= torch.cuda.device_count():
                    fail(f"torchrun started more processes on this node than it has GPUs ({torch.cuda.device_count()}):"
                         " give --nproc_per_node at most that")
                self.device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.device)

    @property
    def master(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            try:
                dist.barrier()
            except RuntimeError:  # the master stopped, with its one-line error: the others end without a traceback
                sys.exit(1)

    def sum(self, value):
        """The sum of a number over all processes (every process gets it)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def mean(self, value):
        """The mean of a float over all processes (every process gets it)."""
        return self.sum(value) / self.world_size

    def any(self, flag):
        """True on every process if `flag` is true on any: all stop at the same step, none left waiting."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return t.item() > 0

    def close(self, interrupted=False):
        """Leave the process group, together: a rank that tore gloo down while the master was still saving the
        last checkpoint died of std::terminate in 7 of 23 runs here. After Ctrl-C the ranks may stand anywhere,
        so they do not wait for each other. With DDP the group's threads outlive this call: see run_main's exit."""
        if self.enabled:
            if not interrupted:
                dist.barrier()
            dist.destroy_process_group()


class GracefulStop:
    """Ctrl-C as a request: inside `with GracefulStop() as stop:` the first SIGINT only sets stop.requested,
    and the training loop stops at its next step boundary and saves there. A KeyboardInterrupt raised wherever
    the loop stood could land inside optimizer.step() (half the weights updated) or after a step was counted,
    so the checkpoint did not resume exactly. A second Ctrl-C interrupts at once: the block ends with
    stop.aborted set, and the caller saves nothing. SIGTERM, what `kill`, Slurm before a preemption and
    torchrun (passing on its own SIGTERM) send, is a request too; a second one terminates at once."""

    def __enter__(self):
        self.requested = self.aborted = False
        self.previous = {s: signal.signal(s, self.request) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def request(self, signum, frame):
        self.requested = True
        self.give_back(signum)
        if torchrun_env()[1] == 0:  # under torchrun every process gets the signal: one line
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: stopping after this step to save it ({name} again: quit without saving)",
                  file=sys.stderr, flush=True)

    def give_back(self, *signums):
        for s in signums or self.previous:  # None: a handler set outside Python, which cannot be put back
            signal.signal(s, signal.SIG_DFL if self.previous[s] is None else self.previous[s])

    def __exit__(self, kind, value, traceback):
        self.give_back()
        self.aborted = kind is KeyboardInterrupt
        return self.aborted  # the KeyboardInterrupt ends here

    def exit_if_stopped(self, step, finished, save, path, log, ddp=None, resume="--resume"):
        """After the loop: if Ctrl-C ended it (not `finished`), exit with status 130, saving the step boundary
        it stopped at with save(), or nothing after a second Ctrl-C. Under torchrun every process gets here at
        the same step (the loop's condition is Dist.any of the request)."""
        if finished and not self.aborted:
            return
        if self.aborted:
            log(f"stopped without saving: {path} holds the last checkpoint")
        else:
            save()
            log(f"stopped at step {step}: saved {path}; continue with {resume}")
        if ddp is not None:
            ddp.close(interrupted=self.aborted)
        sys.exit(130)


def get_batch(data, batch_size, seq_len, generator):
    """batch_size random windows of seq_len + 1 tokens of a flat token array (train.bin) -> inputs x and
    targets y, each (B, T). A window may start at 0 .. len(data) - seq_len - 1, so the last token is a target too."""
    ix = torch.randint(len(data) - seq_len, (batch_size,), generator=generator).tolist()
    xy = torch.from_numpy(np.stack([data[i:i + seq_len + 1].astype(np.int64) for i in ix]))  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]


def seed_dropout(seed, step, rank=0, world_size=1):
    """Seed the generators dropout draws its masks from (the CPU's and every GPU's) for one optimizer step of one
    process: a resumed run draws the masks the stopped run would have drawn (no RNG state to save), and under
    torchrun each process draws its own, as nanoGPT seeds each process apart (seed + rank)."""
    torch.manual_seed(seed + 1_000_003 * (step * world_size + rank + 1))


def linear_lr(step, max_steps, lr, warmup):
    """Linear warmup for `warmup` steps (none at 0), then linear decay to 0 at max_steps: a schedule that ends
    where a small dataset ends (sft.py, rlhf.py's reward model; nanochat's chat_sft decays linearly to 0 too)."""
    return lr * min((step + 1) / max(1, warmup), (max_steps - step) / max(1, max_steps - warmup))


def step_line(step, max_steps, loss, lr, dt, tokens, extra=""):
    """The one step-log format of every training script."""
    tok_s = tokens / max(dt, 1e-9)
    return (f"step {step}/{max_steps} | loss {loss:.3f} | lr {lr:.1e} | {dt * 1000:.0f} ms | "
            f"{tok_s / 1000:.1f}k tok/s{extra}")


def fail(message):
    """The one way a script stops on bad input: one readable line on stderr, exit status 1."""
    sys.exit(f"error: {message}")


def stop_if_diverged(loss, model, step, path, ddp=None):
    """Called after each optimizer step: a nan or inf loss, or weights the step made nan or inf (a finite loss
    can still overflow them), stop the run before they reach `path`, the run's checkpoint, or the next batch's
    sampling: one line naming the step (under torchrun every rank stops, at the same step). The weights are
    checked through their sum, which a nan or inf anywhere makes non-finite: 30x cheaper than isfinite().all()
    (1 ms against 30 ms a step for the 15M shape on this CPU). loss: a float or a 0-d tensor; returns it as a float."""
    weights = torch.stack([p.detach().sum() for p in model.parameters()]).sum()
    # one read of both numbers: on a GPU each .item() waits for the queued work, so the loop waits once a step
    loss, weights = torch.stack([torch.as_tensor(loss, dtype=torch.float32, device=weights.device), weights]).tolist()
    diverged = not (math.isfinite(loss) and math.isfinite(weights))
    if ddp is not None:
        if not ddp.any(diverged):
            return loss
        ddp.close(interrupted=True)
    elif not diverged:
        return loss
    fail(f"the loss is nan or inf at step {step}: training diverged (try a lower learning rate); nothing of it is "
         f"saved{f' ({path} is as it was)' if path and os.path.exists(path) else ''}")


def note_fresh_run(paths, log):
    """A run without --resume saves over its checkpoints as it goes (as nanoGPT does): say so at the start, so
    the old ones are not lost unnoticed."""
    there = [p for p in paths if os.path.exists(p)]
    if there:
        log(f"note: a fresh run: it saves over {' and '.join(there)} as it goes (--resume continues instead)")


def resumed_args(parser, argv, args, ckpt_path, run_control, shape=()):
    """args for --resume: every flag the stopped run was started with (its checkpoint's args), except the flags
    given on this command line and the run-control flags (device, threads, ...) that may differ between runs.
    Without this, `--resume` alone fell back to the defaults: another shape, batch size or schedule. A `shape`
    flag the stopped run's args lack (it predates the flag) is its model's own value (model_args)."""
    try:
        ckpt = peek_checkpoint(ckpt_path)  # main() loads the weights once, later
    except Exception:  # no or no readable checkpoint: load_checkpoint reports it in a moment
        return args
    model_args = {k: v for k, v in (ckpt.get("model_args") or {}).items() if k in shape}
    saved = {**model_args, **(ckpt.get("args") or {})}
    dests = {opt: action.dest for action in parser._actions for opt in action.option_strings}
    typed = [word.split("=")[0] for word in argv if word.startswith("--")]
    given = {dest for word in typed for opt, dest in dests.items()  # argparse also takes unique prefixes
             if opt == word or (opt.startswith(word) and sum(o.startswith(word) for o in dests) == 1)}
    for key, value in saved.items():
        if hasattr(args, key) and key not in given and key not in run_control:
            setattr(args, key, value)
    return args


def read_jsonl(path, missing):
    """(line number, value) for each non-blank line of a UTF-8 JSONL file, read one line at a time; ValueError:
    `missing` when there is no such file (at once), else what is wrong, named by FILE:LINE (bad bytes, bad JSON).
    Read whole, a file was held as bytes, text and lines beside what the caller parsed: sft.py reading a 178 MB
    chat file peaked 666 MB higher, now 466 MB (its parsed conversations)."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; expected a .jsonl file")
    if not os.path.isfile(path):
        raise ValueError(missing)

    def rows():
        with open(path, "rb") as f:  # binary lines end at b"\n" only: JSON strings may hold U+2028, U+0085, ...
            for n, raw in enumerate(f, 1):
                try:  # utf-8-sig: a byte-order mark (Windows editors) is not text
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{n}: not UTF-8 text ({e.reason})") from None
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:  # (RecursionError: nested thousands deep)
                    raise ValueError(f"{path}:{n}: bad JSON ({getattr(e, 'msg', 'nested too deep')})") from None
    return rows()


def run_main(main):
    """A script's `main()`, where a Ctrl-C outside a training loop (preparing data, the exam) ends with one
    line and exit status 130, not a traceback. Every file the scripts write themselves goes through atomic_open or
    a temp file and a rename, so what exists on disk is whole, except: tok.model and tok.vocab (written by
    sentencepiece as tok.new.* and renamed one after the other, or copied from beside an --init checkpoint;
    data.json, written last, vouches for them) and --label's comparisons (appended a line at a time, so a
    stopped session keeps every answer given). A reader that stops reading (`| head`) ends the script quietly;
    a prompt the model's context cannot hold (a model trained with a short --seq-len, asked the world's questions
    by rlhf.py or arena.py) is a one-line error."""
    try:
        main()
    except ContextError as e:
        sys.exit(f"error: {e}")
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError (a GPU's) is a RuntimeError; the CPU
        # allocator's failure is a plain one. The checkpoints on disk are as the last save left them.
        if not (isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e)):
            raise
        sys.exit(f"error: out of memory ({str(e).splitlines()[0][:160] if str(e) else 'MemoryError'}): lower "
                 "--batch-size (raise --grad-accum to keep the batch), --seq-len or the model's size")
    except KeyboardInterrupt:
        print("\ninterrupted: the files already written are whole; the work under way was dropped", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `| head` stopped reading: stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        sys.exit(1)
    except OSError as e:  # a full disk, a folder made read-only mid-run: what is on disk is whole (atomic writes)
        sys.exit(f"error: {e}")
    if torchrun_env()[0] > 1:
        # Under torchrun, leave without the interpreter's teardown. DDP keeps the gloo process group alive past
        # destroy_process_group (its three threads still run after it, measured with torch 2.13), and tearing it
        # down at exit killed a rank with "terminate called without an active exception" in 4 of 40 runs of a
        # 2-process script here, 0 of 40 with this exit. Every file is closed by now; only the streams need it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class Timer:
    def __init__(self):
        self.start = time.time()

    def __call__(self):
        return time.time() - self.start


SECTION = "<!-- stage: {} -->"


def command_line(script, argv):
    """The command a stage ran as, for its report section's title (argv None: this process's own flags)."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def update_report(out_dir, stage, metrics, markdown):
    """Replace `stage`'s section of out/report.md and its entry in out/report.json, never duplicating it.
    report.json is {stage: {metric: value}}; report.md keeps one section per stage, in pipeline order,
    each opened by an HTML comment naming its stage (invisible when rendered). Returns whether they were written."""
    try:  # a file of that name that is not ours (a hand-written report.md, a broken report.json), or one that
        # cannot be read or written (a directory, no permission), is left alone: the work is saved by now
        os.makedirs(out_dir, exist_ok=True)
        report, sections = read_report(out_dir), _read_sections(os.path.join(out_dir, "report.md"))
        report[stage] = metrics
        sections[stage] = markdown.strip()
        order = sorted(sections, key=_section_key)
        text = "# twofiles report card\n\n" + "\n\n".join(f"{SECTION.format(s)}\n{sections[s]}" for s in order)
        with atomic_open(os.path.join(out_dir, "report.json")) as f:
            f.write(json.dumps(report, indent=1) + "\n")
        with atomic_open(os.path.join(out_dir, "report.md")) as f:
            f.write(text + "\n")
    except (ValueError, RecursionError, OSError) as e:  # (UnicodeDecodeError is a ValueError)
        print(f"note: the report is not updated ({e}); its numbers are in the log above", file=sys.stderr)
        return False
    return True


def _section_key(stage):
    """The main job's sections in pipeline order, then each tagged run's (rm_TAG before rlhf_TAG), by tag."""
    base, _, tag = stage.partition("_")
    return bool(tag), tag, STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), stage


def _read_sections(md_path):
    """{stage: markdown} from a report card; ValueError for a file that is not one (an empty one is)."""
    sections, current = {}, None
    if os.path.exists(md_path):
        with open(md_path) as f:
            lines = f.read().splitlines()
        if lines and lines[0] != "# twofiles report card":
            raise ValueError(f"{md_path} is not a twofiles report card")
        for line in lines:
            if line.startswith("<!-- stage: ") and line.endswith(" -->"):
                current = line[len("<!-- stage: "):-len(" -->")]
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
    return {stage: "\n".join(body).strip() for stage, body in sections.items()}


def read_report(out_dir):
    """{stage: {metric: value}} from out/report.json ({} when there is none yet)."""
    path = os.path.join(out_dir, "report.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            report = json.load(f)
        except (json.JSONDecodeError, RecursionError) as e:  # (a RecursionError: arrays nested 100,000 deep)
            raise ValueError(f"{path} is not JSON ({e})") from None
    if not isinstance(report, dict) or not all(isinstance(v, dict) for v in report.values()):
        raise ValueError(f"{path} is not a twofiles report")
    return report


@contextlib.contextmanager
def atomic_open(path, mode="w", **kw):
    """open(path, mode) for writing, through a temp file beside it that replaces path only when the block
    ends without an error: a crash, Ctrl-C or full disk mid-write leaves the old file whole, and no temp
    file behind (a kill -9 can leave one, never a half-written path)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **kw) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def md_table(header, rows):
    """A markdown table from a header list and rows of cells."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("\n", "\\n").replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def chat_answers(model, tok, questions, max_new_tokens=48, temperature=0.0, top_p=None, generator=None):
    """The model's answer to each question asked as a one-turn chat: (ids, text, ended) per question, where
    ids are the sampled tokens (with <|end|> when the model ended its turn), text is their decoding without
    it, and ended tells whether it did."""
    prompts = [render_chat(tok, [{"role": "user", "content": q}], add_generation_prompt=True)[0] for q in questions]
    outs = generate_many(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p,
                         stop_id=tok.end_id, generator=generator)
    return [(o, tok.decode([t for t in o if t != tok.end_id]).strip(), bool(o) and o[-1] == tok.end_id)
            for o in outs]
