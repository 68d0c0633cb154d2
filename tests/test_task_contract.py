"""The contract every task keeps: the loop's four methods, and the three capabilities it declares
(``longtail.tasks.Task``) instead of being recognised by its class name."""

import inspect

import pytest

from longtail.glmc import GLMCTask
from longtail.mfw import MFWTask
from longtail.semi.acr import ACRTask
from longtail.semi.fixmatch import FixMatchTask
from longtail.semi.task import SemiSupervisedTask
from longtail.ssl.tasks import MoCoTask, RotationTask, SimSiamTask
from longtail.stacked import StackedTask
from longtail.tasks import SupervisedTask

TASKS = [SupervisedTask, MFWTask, SemiSupervisedTask, FixMatchTask, StackedTask, RotationTask, MoCoTask, SimSiamTask,
         GLMCTask, ACRTask]
CAPABILITIES = ("multi_process", "image_files", "graphable")


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.__name__)
def test_a_task_has_the_loop_methods_and_declares_its_capabilities(cls):
    for method in ("on_epoch_start", "batches", "loss", "to"):
        assert callable(getattr(cls, method, None)), f"{cls.__name__} lacks {method}()"
    for flag in CAPABILITIES:
        assert hasattr(cls, flag), f"{cls.__name__} does not declare {flag}"
        value = getattr(cls, flag)
        assert isinstance(value, (bool, property)), f"{cls.__name__}.{flag} is {value!r}"
    assert list(inspect.signature(cls.batches).parameters)[1:] == ["epoch", "generator"]


def test_what_the_tasks_declare():
    assert SupervisedTask.multi_process and SupervisedTask.image_files and SupervisedTask.graphable
    assert not MFWTask.multi_process and MFWTask.image_files and not MFWTask.graphable
    assert not FixMatchTask.multi_process and not FixMatchTask.image_files
    assert not SemiSupervisedTask.graphable and SemiSupervisedTask.multi_process
    assert not GLMCTask.multi_process and not GLMCTask.image_files and GLMCTask.graphable
    assert not ACRTask.multi_process and not ACRTask.image_files and not ACRTask.graphable
