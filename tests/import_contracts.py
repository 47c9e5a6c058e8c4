"""An import-linter contract type of our own: no import cycle among modules.

import-linter's `acyclic_siblings` judges packages as wholes (`workflows.services` and
`workflows.events` import each other's modules without any module cycle); the design asks
for no cycle among *modules*, which is what this checks. Registered in pyproject.toml
(`contract_types`), run by `make lint` with the other contracts.
"""

from __future__ import annotations

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def module_cycles(graph: grimp.ImportGraph, packages: set[str]) -> list[list[str]]:
    """One import cycle (a list of modules, each importing the next, the last the first)
    for every strongly connected group of modules under `packages`; [] when there is none.
    Tarjan's algorithm, iterative (a deep import chain must not hit the recursion limit)."""

    def ours(module: str) -> bool:
        return module.split(".")[0] in packages

    modules = sorted(m for m in graph.modules if ours(m))
    successors = {
        m: sorted(n for n in graph.find_modules_directly_imported_by(m) if ours(n)) for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            module, position = work.pop()
            if position == 0:
                index[module] = low[module] = len(index)
                stack.append(module)
                on_stack.add(module)
            following = successors[module]
            if position < len(following):
                work.append((module, position + 1))
                nxt = following[position]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[module] = min(low[module], index[nxt])
                continue
            if work:  # returning to the caller: carry the low-link up
                caller = work[-1][0]
                low[caller] = min(low[caller], low[module])
            if low[module] == index[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1 or module in successors[module]:
                    groups.append(sorted(group))
    return [_one_cycle(graph, group) for group in sorted(groups)]


def _one_cycle(graph: grimp.ImportGraph, group: list[str]) -> list[str]:
    """A concrete cycle through the group's first module: it imports a member, from which
    a shortest chain leads back."""
    first = group[0]
    for nxt in sorted(graph.find_modules_directly_imported_by(first)):
        if nxt in group:
            back = graph.find_shortest_chain(importer=nxt, imported=first) or (nxt, first)
            return [first, *back[:-1]] if nxt != first else [first]
    return group  # unreachable for a strongly connected group


class AcyclicModulesContract(Contract):
    """Options: `packages` (the top-level packages whose modules must not import in a
    cycle; default: the root packages)."""

    type_name = "acyclic_modules"

    packages = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        packages = set(self.packages or self.session_options["root_packages"])  # type: ignore[arg-type]
        cycles = module_cycles(graph, packages)
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print(f"{len(check.metadata['cycles'])} import cycle(s) among modules:")
        output.new_line()
        for cycle in check.metadata["cycles"]:
            output.print_error(" -> ".join([*cycle, cycle[0]]), bold=False)
            output.new_line()
