"""Training: the state and optimiser (`state`), the pure data-parallel step
(`step`), the loop (`loop`) and its periodic hooks (`hooks`).

    jaxdiff.train.train_and_evaluate(config, workdir)
"""
from jaxdiff.train.state import (TrainState, TrainingError, abstract_state,
                                 count_params, init_state, lr_schedule,
                                 make_apply_fn, make_mesh, make_optimizer,
                                 run_keys)
from jaxdiff.train.step import (draw_batch, ema_decay_at, make_train_fn,
                                train_step)
from jaxdiff.train.loop import (check_batch, load_train_data, run_loop,
                                train_and_evaluate)

__all__ = ["TrainState", "TrainingError", "abstract_state", "check_batch",
           "count_params", "draw_batch", "ema_decay_at", "init_state",
           "load_train_data", "lr_schedule", "make_apply_fn", "make_mesh",
           "make_optimizer", "make_train_fn", "run_keys", "run_loop",
           "train_and_evaluate", "train_step"]
