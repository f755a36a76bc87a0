"""Types for the showcase agent, imported by main.py as a top-level module
(the agent folder is on sys.path)."""

from dataclasses import dataclass, field
from typing import List


@dataclass
class Point:
    x: int
    y: int
    label: str = "origin"
    tags: List[str] = field(default_factory=list)
    _secret: str = "a private-looking field"


class Agent:
    """An object whose method is an entrypoint (module "app.invoke")."""

    def __init__(self, name: str):
        self.name = name
        self.calls = 0

    def invoke(self, message: str = "") -> dict:
        self.calls += 1
        return {"agent": self.name, "message": message, "calls": self.calls}
