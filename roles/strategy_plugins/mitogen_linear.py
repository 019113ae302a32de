# -*- coding: utf-8 -*-
"""Ansible's linear strategy run over Mitogen (the `mitogen` package pinned in pyproject.toml).

Mitogen keeps one Python interpreter per host for the whole run and sends modules to it over that one connection,
instead of an ssh round trip, a module upload and a fresh interpreter per task. The plays' semantics are linear's:
every host finishes a task before any host starts the next. Its own plugin directory sits inside the installed
package, whose path differs per machine, so ansible.cfg points here instead.
"""
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
