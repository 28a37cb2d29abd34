"""The one job type of a second kind of node (module testapp.other_node), for tests of nodes that run
different job types: a node importing only this module never registers testapp.jobs' types."""

import msgspec

import forge


class M(msgspec.Struct):
    n: int


@forge.job
def triple(ctx: forge.JobContext, input: M) -> int:
    return input.n * 3
