"""The JSON API, one module a resource."""

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    """Every request body the gateway defines: a field it does not know is refused, naming it,
    as templates do; dropped, a misspelt limit or test command went unseen."""

    model_config = ConfigDict(extra="forbid")


class NoBody(Body):
    """The body of a route that takes none: none at all, or `{}`. Any field is refused, naming
    it: undeclared, a body went unread, and `rerun {"from_step": …}` reset every step."""
