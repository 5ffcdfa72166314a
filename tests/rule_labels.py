"""Which labels an alert of the rule file carries, read from its PromQL text.

Not a PromQL parser: the shapes the project's rules use, read at parenthesis depth 0.

- ``a or b``: the labels both branches carry (an alert may come from either).
- ``a and b``, ``a unless b``, ``a > 0``, ``a - on (...) b``: ``a``'s labels.
- ``a * on (...) group_left (x, y) b``: ``a``'s labels and ``x``, ``y``.
- ``max by (l, ...) (...)`` (max, min, sum, topk): exactly those labels.
- ``label_replace(v, "x", ...)``: ``v``'s labels and ``x``.
- ``absent(m{k="v"})``: the equality matchers' names.
- a recording rule's name: that rule's labels; a metric: the label names its series have in
  the promtool tests' input series (prometheus/tests/), which mirror the exporter's.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))


def _split_top(expr: str, pattern: str) -> list[str]:
    """``expr`` split at the depth-0 matches of ``pattern``."""
    parts, depth, start, i = [], 0, 0, 0
    regex = re.compile(pattern)
    while i < len(expr):
        char = expr[i]
        if char == '"':  # a string literal: skip it whole ("confusion-exporter" is not a minus)
            i = expr.index('"', i + 1) + 1
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and (match := regex.match(expr, i)):
            parts.append(expr[start:i])
            start = i = match.end()
            continue
        i += 1
    parts.append(expr[start:])
    return parts


def _unwrap(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")") and len(_split_top(expr[1:-1], r"\)\s*\(")) >= 1:
        inner = expr[1:-1]
        depth = 0
        for char in inner:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                return expr  # "(a) * (b)": the outer parentheses are not one pair
        expr = inner.strip()
    return expr


class RuleLabels:
    def __init__(self, rules: list[Path] = RULES, tests: list[Path] = RULE_TESTS):
        self.records: dict[str, str] = {}
        self.alerts: dict[str, dict] = {}  # type: ignore[type-arg]
        for path in rules:
            for group in yaml.safe_load(path.read_text())["groups"]:
                for rule in group["rules"]:
                    if "record" in rule:
                        self.records[rule["record"]] = rule["expr"]
                    else:
                        self.alerts[rule["alert"]] = rule
        self.series: dict[str, set[str]] = {}
        for path in tests:
            for case in yaml.safe_load(path.read_text())["tests"]:
                for series in case.get("input_series", []):
                    name, _, body = series["series"].partition("{")
                    labels = set(re.findall(r"(\w+)\s*=", body))
                    self.series.setdefault(name.strip(), set()).update(labels)

    def of_alert(self, name: str) -> frozenset[str]:
        rule = self.alerts[name]
        return frozenset(rule.get("labels", {})) | self.of_expr(rule["expr"])

    def of_expr(self, expr: str) -> frozenset[str]:
        expr = _unwrap(expr)
        branches = _split_top(expr, r"\bor\b")
        if len(branches) > 1:
            sets = [self.of_expr(b) for b in branches]
            return frozenset.intersection(*sets)
        first = _split_top(expr, r"\b(?:and|unless)\b")
        if len(first) > 1:
            return self.of_expr(first[0])
        joined = _split_top(expr, r"[*/+-]\s*on\s*\([^)]*\)\s*group_left\s*(?:\(([^)]*)\))?")
        if len(joined) > 1:
            added = set()
            for match in re.finditer(r"group_left\s*\(([^)]*)\)", expr):
                added.update(n.strip() for n in match.group(1).split(",") if n.strip())
            return self.of_expr(joined[0]) | frozenset(added)
        compared = _split_top(expr, r"(?:==|!=|>=|<=|>|<)")
        if len(compared) > 1:
            return self.of_expr(compared[0])
        matching = r"[-+*/]\s*(on|ignoring)\s*\(([^)]*)\)\s*(group_right\s*(?:\([^)]*\))?)?"
        arithmetic = _split_top(expr, matching)
        if len(arithmetic) > 1:
            how, names, right = re.search(matching, expr).groups()  # type: ignore[union-attr]
            listed = {n.strip() for n in names.split(",") if n.strip()}
            if right:  # group_right keeps the right side's labels
                return self.of_expr(arithmetic[1])
            left = self.of_expr(arithmetic[0])
            # One-to-one: `on (x)` keeps only x, `ignoring (x)` drops x.
            return left & frozenset(listed) if how == "on" else left - frozenset(listed)
        scalar_arith = [p for p in _split_top(expr, r"[-+*/]") if p.strip() and not _is_scalar(p)]
        if len(scalar_arith) >= 1 and len(_split_top(expr, r"[-+*/]")) > 1:
            return self.of_expr(scalar_arith[0])
        return self._atom(expr)

    def _atom(self, expr: str) -> frozenset[str]:
        if match := re.fullmatch(r"(?:max|min|sum|count|topk)\s+by\s*\(([^)]*)\)\s*\((.*)\)", expr, re.S):
            return frozenset(n.strip() for n in match.group(1).split(",") if n.strip())
        if match := re.fullmatch(r"topk\s+by\s*\(([^)]*)\)\s*\(.*\)", expr, re.S):
            return frozenset(n.strip() for n in match.group(1).split(",") if n.strip())
        if match := re.fullmatch(r"label_replace\((.*?),\s*\"(\w+)\"\s*,.*\)", expr, re.S):
            return self.of_expr(match.group(1)) | {match.group(2)}
        if match := re.fullmatch(r"absent\(\s*\w+\{([^}]*)\}\s*\)", expr, re.S):
            return frozenset(re.findall(r"(\w+)\s*=\s*\"", match.group(1)))
        if match := re.fullmatch(r"(?:rate|increase)\((\w+)(?:\{[^}]*\})?\[\w+\]\)", expr, re.S):
            return frozenset(self.series.get(match.group(1), set()))
        if match := re.fullmatch(r"([\w:]+)\s*(?:\{[^}]*\})?", expr, re.S):
            name = match.group(1)
            if name in self.records:
                return self.of_expr(self.records[name])
            if name not in self.series:
                raise ValueError(f"no input series of {name} in prometheus/tests/ to read its labels from")
            return frozenset(self.series[name])
        raise ValueError(f"cannot read the labels of: {expr!r}")


def _is_scalar(part: str) -> bool:
    part = _unwrap(part)
    return bool(re.fullmatch(r"[\d.]+|time\(\)", part))
