"""How a model is trained across workers: prepare(model, cfg) -> DDP or DeepSpeed ZeRO engine.

The only module that wraps models for parallelism; the train loop talks to the Engine and has
no strategy-specific branches.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from mlc_dist.config import TrainConfig

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases and norm weights (the BERT recipe).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _qualified(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def unwrap(model: nn.Module) -> nn.Module:
    """The single-device model inside DDP and torch.compile wrappers: what is saved and
    exported, so its state_dict has neither `module.` nor `_orig_mod.` prefixes."""
    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def compile_model(model: nn.Module, num_shapes: int | None = None) -> nn.Module:
    """torch.compile with static shapes (dynamic=False): one graph per input shape, each
    specialised. Bounded because batches are padded to multiples of data.pad_to_multiple_of up
    to data.max_length (widths), at the full batch size and an epoch's last, smaller one:
    `num_shapes` (JobConfig.compile_shapes) raises dynamo's recompile limit (8) to fit them, so
    no shape falls back to eager. Compiling the DDP wrapper lets dynamo split graphs at DDP's
    bucket boundaries (DDPOptimizer), overlapping all-reduce with backward."""
    import torch._dynamo

    if num_shapes:
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, num_shapes)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                                 4 * num_shapes)
    return torch.compile(model, dynamic=False)


class DDPEngine:
    """DDP via Ray Train, AdamW with linear warmup/decay, AMP, accumulation and clipping."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, num_training_steps: int,
                 num_shapes: int | None = None):
        import ray.train.torch
        from transformers import get_linear_schedule_with_warmup

        self.cfg = cfg
        self.device = ray.train.torch.get_device()
        # transformers' save_pretrained imports deepspeed (through accelerate) when installed;
        # told the accelerator, it does not guess and warn about it.
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if self.device.type == "cuda" else "cpu")
        from mlc_dist.models import leaves_parameters_unused

        find_unused = cfg.find_unused_parameters
        if find_unused is None:
            find_unused = leaves_parameters_unused(model)
        # Gradients live in DDP's buckets (no copy per step). Buffers are broadcast before each
        # forward only for models whose buffers train (BatchNorm running stats: the MLP);
        # BERT-class buffers are constants.
        self.model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={
                "find_unused_parameters": find_unused, "gradient_as_bucket_view": True,
                "broadcast_buffers": any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                         for m in model.modules())})
        self._module = unwrap(self.model)
        if cfg.compile:  # after DDP wraps it; the optimizer takes the same parameters
            self.model = compile_model(self.model, num_shapes)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           fused=self.device.type == "cuda")
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.warmup_ratio * num_training_steps), num_training_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self._micro = 0

    @property
    def module(self) -> nn.Module:
        """The single-device model inside the wrappers (what gets saved and exported)."""
        return self._module

    def autocast(self):
        return torch.autocast(self.device.type, dtype=_DTYPES[self.cfg.precision],
                              enabled=self.cfg.precision != "fp32")

    @contextlib.contextmanager
    def accumulate(self):
        """Forward+backward of one micro-batch; DDP syncs gradients only on the last of a step."""
        boundary = (self._micro + 1) % self.cfg.grad_accum_steps == 0
        sync = contextlib.nullcontext() if boundary or not hasattr(self.model, "no_sync") \
            else self.model.no_sync()
        with sync:  # the caller runs only the forward under autocast(), not the backward
            yield

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.cfg.grad_accum_steps).backward()
        self._micro += 1

    def step(self, flush: bool = False) -> bool:
        """Apply an optimizer step at an accumulation boundary (or when flushing an epoch end)."""
        if self._micro == 0 or (self._micro % self.cfg.grad_accum_steps and not flush):
            return False
        if self.cfg.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._micro = 0
        return True

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @property
    def description(self) -> dict:
        """What actually wraps the model (on 1 worker Ray leaves it unwrapped), for metrics.json."""
        compiled = isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule)
        wrapper = self.model._orig_mod if compiled else self.model
        return {"wrapper": _qualified(wrapper), **({"compiled": True} if compiled else {})}

    def export_state_dict(self) -> dict | None:
        """Full weights for the export when the module does not hold them (None: it does)."""
        return None

    def save(self, directory: str, rank: int) -> None:
        """Optimizer/scheduler/scaler state; DDP replicas are identical, so rank 0 writes it."""
        if rank == 0:
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict()},
                       os.path.join(directory, "engine_state.pt"))

    def load(self, directory: str) -> None:
        from safetensors.torch import load_file

        weights = load_file(os.path.join(directory, "model", "model.safetensors"))
        self.module.load_state_dict(weights)  # strict: a missing or unknown key fails
        # weights_only: we never unpickle arbitrary objects, even from our own checkpoints.
        state = torch.load(os.path.join(directory, "engine_state.pt"), weights_only=True,
                           map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1/2/3 on the process group Ray Train already set up (gloo on CPU, NCCL on GPU).

    Precision, accumulation, clipping and fp16 loss scaling happen inside DeepSpeed; the optimizer
    is torch AdamW and the schedule transformers' linear warmup, as for DDP, so no ops compile.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, num_training_steps: int,
                 ds_config: dict):
        import ray.train.torch
        from transformers import get_linear_schedule_with_warmup

        self.cfg = cfg
        self.device = ray.train.torch.get_device()
        # Read once at deepspeed import: without it a CPU-only box may pick a GPU accelerator.
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if self.device.type == "cuda" else "cpu")
        import deepspeed
        import deepspeed.ops

        if self.device.type == "cpu":
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op at init (minutes,
            # and it waits forever on a stale torch_extensions lock); gloo does the job without it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * num_training_steps), num_training_steps)
        # dist_init_required=False: reuse Ray Train's process group instead of making a new one.
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            dist_init_required=False)
        self._stage = self.model.zero_optimization_stage()

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed casts the module itself for bf16/fp16

    @contextlib.contextmanager
    def accumulate(self):
        yield  # DeepSpeed counts micro-steps and defers gradient reduction to the boundary

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # divides by gradient_accumulation_steps itself

    def step(self, flush: bool = False) -> bool:
        """DeepSpeed steps at its own accumulation boundary; it cannot apply a partial window,
        so at an epoch end the leftover micro-batches carry into the next step (flush is a no-op)."""
        if flush:
            return False
        boundary = self.model.is_gradient_accumulation_boundary()
        self.model.step()
        return boundary

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @property
    def description(self) -> dict:
        """The engine DeepSpeed returned and the ZeRO stage it runs, for metrics.json."""
        return {"wrapper": _qualified(self.model),
                "zero_stage": self.model.zero_optimization_stage()}

    def export_state_dict(self) -> dict | None:
        """Consolidated fp32 weights on rank 0 (ZeRO-3 gathers layer by layer); call on every rank.

        In bf16/fp16 the module holds DeepSpeed's 16-bit copy: the export takes the optimizer's
        fp32 master weights instead (gathered from every rank's partition)."""
        if self.cfg.precision in ("bf16", "fp16"):
            return self._fp32_masters()
        if self._stage == 3:
            state = self.model._zero3_consolidated_16bit_state_dict()  # None off rank 0
        else:
            state = self.module.state_dict()
        return None if state is None else {k: v.detach().float().cpu().clone()
                                           if v.is_floating_point() else v for k, v in state.items()}

    def _fp32_masters(self) -> dict | None:
        import torch.distributed as dist
        from deepspeed.utils import safe_get_full_fp32_param

        # A collective per parameter: every rank calls, in the same order; rank 0 keeps them.
        keep = not dist.is_initialized() or dist.get_rank() == 0
        masters = {}
        for param in dict.fromkeys(p for _, p in self.module.named_parameters()):
            full = safe_get_full_fp32_param(param)
            if keep:
                masters[id(param)] = full.detach().float().cpu().clone()
        if not keep:
            return None
        # The module's own state_dict keys: tied names share their master; buffers as they are.
        return {name: masters[id(v)] if isinstance(v, nn.Parameter) else v.detach().cpu().clone()
                for name, v in self.module.state_dict(keep_vars=True).items()}

    def save(self, directory: str, rank: int) -> None:
        """Every rank writes its ZeRO shards; the files have rank-specific names, Ray merges them."""
        self.model.save_checkpoint(os.path.join(directory, "deepspeed"), tag="state",
                                   save_latest=False)

    def load(self, directory: str) -> None:
        path, _ = self.model.load_checkpoint(os.path.join(directory, "deepspeed"), tag="state",
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
        assert path is not None, f"no DeepSpeed state under {directory}"


def prepare(model: nn.Module, cfg: TrainConfig, num_training_steps: int,
            ds_config: dict | None = None, num_shapes: int | None = None
            ) -> DDPEngine | DeepSpeedEngine:
    """The engine for `cfg.strategy`, with `train.precision` resolved on this worker's device
    (auto: bf16 where the GPU has it natively, fp16 on older GPUs, fp32 on CPU); `train.compile`
    compiles the DDP model for at most `num_shapes` input shapes (JobConfig.compile_shapes)."""
    import ray.train.torch

    from mlc_dist.precision import resolve

    device = ray.train.torch.get_device()
    cfg = cfg.model_copy(update={"precision": resolve(cfg.precision, device)})
    if device.type == "cuda":
        # fp32 matmuls (and fp32 parts of an AMP step) on tensor cores: TF32.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.strategy == "deepspeed":
        ds_config = dict(ds_config or {})
        for key in ("bf16", "fp16"):
            ds_config[key] = {**ds_config.get(key, {}), "enabled": cfg.precision == key}
        return DeepSpeedEngine(model, cfg, num_training_steps, ds_config)
    return DDPEngine(model, cfg, num_training_steps, num_shapes)
