"""The scriptable fake OpenAI upstream; see fake_upstream.py."""
from .fake_upstream import *  # noqa: F401,F403
from .fake_upstream import FakeUpstream, Action, Request  # noqa: F401
