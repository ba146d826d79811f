"""Training: the state and optimiser (`state`), the pure data-parallel step
(`step`) and the loop with its periodic hooks (`loop`).

    jaxdiff.train.train_and_evaluate(config, workdir)
"""
from jaxdiff.train.loop import train_and_evaluate
from jaxdiff.train.state import (TrainState, TrainingError, abstract_state,
                                 count_params, init_state, lr_schedule,
                                 make_apply_fn, make_mesh, make_optimizer,
                                 run_keys)
from jaxdiff.train.step import (draw_batch, ema_decay_at, make_train_fn,
                                train_step)
