# -*- coding: utf-8 -*-
"""Print how long each task took (all hosts together) and the slowest ones at the end of the run."""
from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: pilothouse_timing
type: aggregate
short_description: per-task wall-clock timing and a slowest-tasks summary
description:
  - Adds the elapsed time to every task and prints the slowest tasks and the total at the end.
  - Core ansible has no such callback (profile_tasks lives in ansible.posix, a Galaxy collection).
requirements: [enable in callbacks_enabled]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pilothouse_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._start = time.monotonic()
        self._current = None
        self._times = []

    def _finish_current(self):
        if self._current is not None:
            name, started = self._current
            elapsed = time.monotonic() - started
            self._times.append((elapsed, name))
            self._display.display("  [%s took %.1fs, %.1fs in total]" % (name, elapsed, time.monotonic() - self._start))
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._finish_current()
        self._current = (task.get_name().strip(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_play_start(self, play):
        self._finish_current()

    def v2_playbook_on_stats(self, stats):
        self._finish_current()
        self._display.banner("SLOWEST TASKS")
        for elapsed, name in sorted(self._times, reverse=True)[:12]:
            self._display.display("%7.1fs  %s" % (elapsed, name))
        self._display.display("%7.1fs  total playbook time" % (time.monotonic() - self._start))
