"""BaseTrainer: the one training loop every backend shares.

data -> tokenizer -> model -> optimizer and schedule -> steps (evaluation, early stopping,
checkpoints, progress events, stop requests) -> test evaluation -> artifact. A backend
supplies only the network and its loss (:class:`~model_trainer.engine.backend.Backend`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import psutil
import structlog
import torch
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    Generation,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
)
from pydantic import JsonValue

from model_trainer.core import storage
from model_trainer.engine import checkpoint, distributed
from model_trainer.engine.artifact import write_artifact
from model_trainer.engine.backend import Backend
from model_trainer.engine.context import RunContext, stopped
from model_trainer.engine.dataset import Tokens, derive_seed
from model_trainer.engine.optim import lr_at, warmup_steps
from model_trainer.engine.packing import Packed, draw
from model_trainer.engine.prepare import Prepared, prepare
from model_trainer.engine.remote import publish_artifact
from model_trainer.engine.stages import stage

_C = ModelTrainerErrorCode
log = structlog.get_logger()
DIVERGENCE_FACTOR = 4.0
SETTLE_STEPS = 10  # steps after warmup before the best smoothed loss counts


def ppl(loss: float) -> float:
    return math.exp(min(loss, 80.0))  # capped: events refuse infinities


@dataclass
class Meter:
    """Loss and throughput since the last progress event; eval and I/O time excluded."""

    started: float = field(default_factory=time.monotonic)
    mark: float = field(default_factory=time.monotonic)
    last_emit: float = field(default_factory=time.monotonic)
    loss_sum: float = 0.0
    steps: int = 0
    busy_s: float = 0.0  # training time since the last event
    train_s: float = 0.0  # training time this attempt
    steps_done: int = 0

    def step(self, loss: float) -> None:
        now = time.monotonic()
        self.busy_s += now - self.mark
        self.train_s += now - self.mark
        self.mark = now
        self.loss_sum += loss
        self.steps += 1
        self.steps_done += 1

    def resume(self) -> None:
        """Restart the step clock after non-training work (evaluation, events, checkpoints)."""
        self.mark = time.monotonic()

    def reset(self) -> None:
        self.loss_sum, self.steps, self.busy_s = 0.0, 0, 0.0
        self.last_emit = time.monotonic()


class BaseTrainer:
    """Trains ``ctx.job`` with ``backend``; see :func:`model_trainer.engine.run_job`."""

    def __init__(self, ctx: RunContext, backend: Backend) -> None:
        self.ctx, self.backend, self.job = ctx, backend, ctx.job
        self.started = time.monotonic()

    def run(self) -> CompletedEventV1:
        torch.set_num_threads(max(1, self.ctx.threads))
        with stage("prepare"):
            p = prepare(self.ctx, self.backend)
        device = p.placement.device.type
        rank = self.ctx.rank
        if rank is not None:  # from here every rank runs the same steps: stops are agreed
            self.ctx.stop_requested = distributed.agreed_stop(self.ctx.stop_requested)
        self._emit(self._config_event(p))
        with stage("train", device):
            early_stopped = self._train(p)
        test_loss = None
        self.ctx.obey_stop("evaluate", p.loop.step)  # the checkpoint of the last step stays
        if len(p.splits.test):
            with stage("evaluate", device):
                test_loss = self._evaluate(p, p.splits.test, "test", 0)
        generations: list[Generation] = []
        if p.held_out is not None and self.job.generate is not None:
            # Imported here: it needs transformers, which text-only workers never import.
            from model_trainer.engine.generation import answer_held_out

            with stage("evaluate", device):
                generations = answer_held_out(
                    p.model, p.held_out, self.job.generate, p.tokenizer, p.placement, p.context
                )
        self.ctx.obey_stop("save", p.loop.step)
        with stage("train", device):  # a full disk here is DISK_FULL, like any checkpoint's
            self._checkpoint(p)  # the final step: a crash from here on resumes without training
        model = distributed.whole_model(
            p.model,
            self.ctx.rank,
            lambda: self.backend.build(self.job.model, p.tokenizer.vocab_size),
        )
        if model is None:  # not rank 0 of several: rank 0 writes the artifact
            return self._completed(p, test_loss, early_stopped, str(self.ctx.job_dir), "", [])
        with stage("save", device):
            fence = checkpoint.Fence.of(self.ctx)
            digest = write_artifact(
                self.ctx.job_dir,
                self.backend,
                model,
                p.tokenizer,
                self._manifest(p, test_loss),
                attempt=self.ctx.attempt,
                check=lambda: fence.check(p.loop.step),
            )
            location = str(self.ctx.job_dir)
            if self.ctx.artifacts_url is not None:
                fence.check(p.loop.step)
                location = publish_artifact(
                    self.ctx.job_dir,
                    storage.join(self.ctx.artifacts_url, self.job.job_id),
                    self.ctx.storage_retry_s,
                )
        log.info("engine.completed", job_id=self.job.job_id, step=p.loop.step, test_loss=test_loss)
        return self._completed(p, test_loss, early_stopped, location, digest, generations)

    def _completed(
        self,
        p: Prepared,
        test_loss: float | None,
        early_stopped: bool,
        location: str,
        digest: str,
        generations: list[Generation],
    ) -> CompletedEventV1:
        return CompletedEventV1(
            **self.ctx.envelope(),
            test_loss=test_loss,
            test_ppl=None if test_loss is None else ppl(test_loss),
            best_val_loss=p.loop.best_val,
            steps=p.loop.step,
            duration_s=time.monotonic() - self.started,
            early_stopped=early_stopped,
            artifact_path=location,
            manifest_digest=digest,
            generations=generations,
        )

    def _train(self, p: Prepared) -> bool:
        """Run steps until the total, an early stop (returns True) or a stop request (raises)."""
        tr, loop, meter = self.job.training, p.loop, Meter()
        checkpoint_every = self.ctx.checkpoint_every  # resolved by whoever runs the job
        while loop.step < p.total_steps:
            self._obey_stop(p)
            lr = lr_at(loop.step, tr, p.total_steps)
            for group in p.optimizer.param_groups:
                group["lr"] = lr
            loss, grad_norm = self._step(p)
            loop.step += 1
            grad_norm = self._guard(p, loss, grad_norm)
            meter.step(loss)
            val_loss, stop_early = None, False
            if loop.step % tr.eval_every == 0 or loop.step == p.total_steps:
                val_loss = self._evaluate(p, p.splits.val, "val", loop.step, interruptible=True)
                if val_loss is None:  # a stop request arrived during the evaluation
                    self._obey_stop(p)
                else:
                    stop_early = self._track(p, val_loss)
            if val_loss is not None or self._progress_due(meter, loop.step, p.total_steps):
                self._emit(self._progress_event(p, meter, loss, grad_norm, lr, val_loss))
            if loop.step % checkpoint_every == 0 and loop.step < p.total_steps:
                self._checkpoint(p)
            if stop_early:
                log.info("engine.early_stopped", job_id=self.job.job_id, step=loop.step)
                return True
            meter.resume()
        return False

    def _step(self, p: Prepared) -> tuple[float, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches: (loss, grad norm)."""
        tr, model, opt, scaler = self.job.training, p.model, p.optimizer, p.scaler
        total, rank = torch.zeros((), device=p.placement.device), self.ctx.rank
        for micro in range(tr.grad_accum_steps):
            seed = derive_seed(tr.seed, "train", p.loop.step, micro)
            x, y, positions = draw(p.splits.train, p.context, tr.batch_size, seed)
            # Several processes: each trains on its slice of the same global batch.
            x, y = distributed.local_rows(x, rank), distributed.local_rows(y, rank)
            if positions is not None:
                positions = distributed.local_rows(positions, rank)
            with p.placement.autocast():
                loss = self._loss(p, x, y, positions) / tr.grad_accum_steps
            scaled: torch.Tensor = scaler.scale(loss) if scaler is not None else loss
            torch.autograd.backward(scaled)  # typed, unlike Tensor.backward
            total += loss.detach()
        if scaler is not None:
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip or math.inf)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return float(distributed.mean(total, rank)), distributed.full_norm(norm)

    def _loss(
        self, p: Prepared, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor | None
    ) -> torch.Tensor:
        x, y = p.placement.to_device(x), p.placement.to_device(y)
        if pos is None:
            return self.backend.loss(p.model, x, y)
        return self.backend.packed_loss(p.model, x, y, p.placement.to_device(pos))

    def _guard(self, p: Prepared, loss: float, grad_norm: float) -> float:
        """Check step ``p.loop.step``: TRAINING_NAN_LOSS on a non-finite loss or (without an
        fp16 scaler, which skips such steps itself) gradient; TRAINING_DIVERGED when, after
        warmup, the loss exceeds both DIVERGENCE_FACTOR x the best smoothed loss and the loss
        of guessing uniformly (ln V). Returns the grad norm to report."""
        loop = p.loop
        if not math.isfinite(loss):
            raise self._nan(p, "the loss became NaN or infinite")
        if not math.isfinite(grad_norm):
            if p.scaler is None:  # the step just wrote non-finite weights
                raise self._nan(p, "the gradient became NaN or infinite")
            grad_norm = 0.0  # fp16: the scaler skipped the step and lowers its scale
        loop.smooth_loss = loss if loop.smooth_loss is None else 0.9 * loop.smooth_loss + 0.1 * loss
        if loop.step <= warmup_steps(self.job.training, p.total_steps) + SETTLE_STEPS:
            return grad_norm
        best = math.inf if loop.best_smooth is None else loop.best_smooth
        loop.best_smooth = min(best, loop.smooth_loss)
        floor = math.log(p.tokenizer.vocab_size)
        if loss > DIVERGENCE_FACTOR * loop.best_smooth and loss > floor:
            raise ModelTrainerError(
                _C.TRAINING_DIVERGED,
                f"loss {loss:.3f} at step {loop.step} is over {DIVERGENCE_FACTOR:g}x the best "
                f"smoothed loss {loop.best_smooth:.3f}",
                details={"step": loop.step, "loss": loss, "best_smoothed_loss": loop.best_smooth},
                stage="train",
            )
        return grad_norm

    def _nan(self, p: Prepared, why: str) -> ModelTrainerError:
        return ModelTrainerError(
            _C.TRAINING_NAN_LOSS, f"{why} at step {p.loop.step}", details={"step": p.loop.step}
        )

    @torch.no_grad()
    def _evaluate(
        self,
        p: Prepared,
        data: Tokens | Packed,
        split: str,
        step: int,
        *,
        interruptible: bool = False,
    ) -> float | None:
        """Mean loss over ``eval_batches`` random batches of ``data`` (seeded by split, step);
        None when ``interruptible`` and a stop was requested before it finished."""
        tr = self.job.training
        p.model.eval()
        total = 0.0
        for i in range(tr.eval_batches):
            if interruptible and self.ctx.stop_requested() is not None:
                p.model.train()
                return None
            x, y, pos = draw(data, p.context, tr.batch_size, derive_seed(tr.seed, split, step, i))
            with p.placement.autocast():
                total += float(self._loss(p, x, y, pos))
        p.model.train()
        return total / tr.eval_batches

    def _track(self, p: Prepared, val_loss: float) -> bool:
        """Record an evaluation; True when early stopping's patience has run out."""
        loop, patience = p.loop, self.job.training.early_stopping_patience
        if loop.best_val is None or val_loss < loop.best_val:
            loop.best_val, loop.evals_since_best = val_loss, 0
        else:
            loop.evals_since_best += 1
        return patience is not None and loop.evals_since_best >= patience

    def _obey_stop(self, p: Prepared) -> None:
        """Checkpoint and stop when asked to (cancel, deadline, shutdown)."""
        reason = self.ctx.stop_requested()
        if reason is None:
            return
        self._checkpoint(p)
        step = p.loop.step
        log.info("engine.stopped", job_id=self.job.job_id, step=step, reason=reason.name.lower())
        raise stopped(reason, step, "train")

    def _checkpoint(self, p: Prepared) -> None:
        fence = checkpoint.Fence.of(self.ctx)
        fence.check(p.loop.step)
        rank = self.ctx.rank
        if rank is not None and self.ctx.artifacts_url is None:  # each rank its own shards
            checkpoint.save_sharded(
                fence.folder,
                model=p.model,
                optimizer=p.optimizer,
                scaler=p.scaler,
                loop=p.loop,
                run_digest=p.run_digest,
                data_key=p.splits.cache_key,
                rank=rank,
            )
            if rank.leader:
                log.info("engine.checkpoint", job_id=self.job.job_id, step=p.loop.step)
            return
        # One process, or several mirroring to object storage: the whole state in one file.
        model, optimizer = distributed.whole_states(p.model, p.optimizer, self.ctx.rank)
        if self.ctx.rank is not None and not self.ctx.rank.leader:
            return  # rank 0 writes the gathered state
        saved = checkpoint.save(
            fence.folder,
            model=model,
            optimizer=optimizer,
            scaler=p.scaler,
            loop=p.loop,
            run_digest=p.run_digest,
            data_key=p.splits.cache_key,
        )
        fence.saved(saved, p.loop.step)
        log.info("engine.checkpoint", job_id=self.job.job_id, step=p.loop.step)

    def _progress_due(self, meter: Meter, step: int, total: int) -> bool:
        every = self.job.progress
        if step % every.every_steps == 0 or step == total:
            return True
        return every.every_seconds is not None and (
            time.monotonic() - meter.last_emit >= every.every_seconds
        )

    def _emit(self, event: ConfigEventV1 | ProgressEventV1) -> None:
        self.ctx.emit(event)

    def _progress_event(
        self,
        p: Prepared,
        meter: Meter,
        loss: float,
        grad_norm: float,
        lr: float,
        val_loss: float | None,
    ) -> ProgressEventV1:
        step, busy = p.loop.step, max(meter.busy_s, 1e-9)
        train_loss = meter.loss_sum / meter.steps if meter.steps else loss
        per_step = meter.train_s / max(1, meter.steps_done)
        samples = meter.steps * self.job.training.batch_size * self.job.training.grad_accum_steps
        tokens_per_sec = meter.steps * p.tokens_per_step / busy
        peak = p.placement.peak_flops
        event = ProgressEventV1(
            **self.ctx.envelope(),
            epoch=step * p.tokens_per_step // len(p.splits.train),
            total_epochs=p.total_epochs,
            step=step,
            total_steps=p.total_steps,
            train_loss=train_loss,
            train_ppl=ppl(train_loss),
            grad_norm=grad_norm,
            learning_rate=lr,
            samples_per_sec=samples / busy,
            tokens_per_sec=tokens_per_sec,
            elapsed_s=time.monotonic() - self.started,
            eta_s=(p.total_steps - step) * per_step,
            val_loss=val_loss,
            val_ppl=None if val_loss is None else ppl(val_loss),
            mfu=None if peak is None else tokens_per_sec * p.flops_per_token / peak,
        )
        meter.reset()
        return event

    def _config_event(self, p: Prepared) -> ConfigEventV1:
        tr = self.job.training
        tok = self.job.tokenizer
        train = p.splits.train
        return ConfigEventV1(
            **self.ctx.envelope(),
            backend=self.job.backend,
            model_family=self.backend.family,
            model_size=f"{p.num_parameters / 1e6:.2f}M",
            num_parameters=p.num_parameters,
            tokenizer=p.tokenizer.kind if tok.kind != "job" else f"{p.tokenizer.kind}:{tok.job_id}",
            vocab_size=p.tokenizer.vocab_size,
            train_tokens=len(p.splits.train),
            val_tokens=len(p.splits.val),
            test_tokens=len(p.splits.test),
            loss_tokens=train.loss_tokens if isinstance(train, Packed) else None,
            packing_efficiency=train.efficiency if isinstance(train, Packed) else None,
            total_steps=p.total_steps,
            total_epochs=p.total_epochs,
            start_step=p.loop.step,
            device=str(p.placement.device),
            precision=p.placement.precision,
            optimal_threads=max(1, self.ctx.threads),
            cpu_cores=os.cpu_count() or 1,
            memory_gb=psutil.virtual_memory().total / 2**30,
            batch_size=tr.batch_size,
            learning_rate=tr.learning_rate,
            queue=self.ctx.queue,
        )

    def _manifest(self, p: Prepared, test_loss: float | None) -> dict[str, JsonValue]:
        return {
            "format": 1,
            "job": self.job.model_dump(mode="json"),
            "spec_digest": p.run_digest,  # the run digest (name kept for readers)
            "resolved": {
                "backend": self.backend.name,
                "model_family": self.backend.family,
                "num_parameters": p.num_parameters,
                "tokenizer": p.tokenizer.kind,
                "vocab_size": p.tokenizer.vocab_size,
                "context_length": p.context,
                "device": str(p.placement.device),
                "precision": p.placement.precision,
                "compile": p.placement.compile,
                "fused_adamw": p.placement.fused_adamw,
                "tf32": p.placement.tf32,
                "flops_per_token": p.flops_per_token,
                "total_steps": p.total_steps,
                "tokens": {
                    "train": len(p.splits.train),
                    "val": len(p.splits.val),
                    "test": len(p.splits.test),
                },
                "token_cache_key": p.splits.cache_key,
            },
            "metrics": {
                "steps": p.loop.step,
                "best_val_loss": p.loop.best_val,
                "test_loss": test_loss,
            },
        }
