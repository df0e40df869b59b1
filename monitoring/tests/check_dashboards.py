#!/usr/bin/env python3
"""Checks the Grafana dashboards in monitoring/grafana/dashboards.

For every dashboard JSON file:
  * it parses, has a uid (unique across files), a title, schemaVersion 39 and panels;
  * panel ids are unique, every panel has a gridPos inside the 24-column grid and no two
    panels overlap;
  * every panel other than a row has a datasource whose uid is provisioned in
    monitoring/grafana/provisioning/datasources, and at least one target; Prometheus
    targets have a unique refId and a non-empty expr;
  * every metric name used in a query (panel targets and template variables) is a kefu
    metric, a recording rule from monitoring/rules, or `up`; every function is a PromQL
    function; every $variable is defined by the dashboard or built into Grafana;
  * with --promtool (or promtool on PATH unless --no-promtool), every query is also
    parsed by `promtool check rules` after the Grafana variables are filled in.

Usage: check_dashboards.py [--promtool PATH | --no-promtool] [MONITORING_DIR]
Exit status 0 when everything holds, 1 otherwise (each problem printed on its own line).
Python standard library only.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# The metrics the services export (every one carries service="kefu-<service>").
COUNTERS = {
    "kefu_grpc_server_requests_total",
    "kefu_grpc_client_requests_total",
    "kefu_messages_total",
    "kefu_escalations_total",
    "kefu_intents_total",
    "kefu_sentiment_labels_total",
    "kefu_tickets_created_total",
    "kefu_knowledge_searches_total",
    "kefu_cache_requests_total",
    "kefu_sla_priority_raises_total",
    "kefu_auth_failures_total",
    "kefu_conversation_events_delivered_total",
}
GAUGES = {
    "kefu_grpc_server_requests_in_flight",
    "kefu_ticket_queue_depth",
    "kefu_ticket_queue_oldest_age_seconds",
    "kefu_ticket_queue_overdue",
    "kefu_health_status",
    "kefu_build_info",
}
HISTOGRAMS = {
    "kefu_grpc_server_request_duration_seconds",
    "kefu_ticket_resolution_seconds",
    "kefu_handoff_first_response_seconds",
    "kefu_csat_score",
    "kefu_event_delivery_seconds",
}
# Series Prometheus itself attaches to every target.
SCRAPE_SERIES = {"up"}


def exported_series():
    names = set(COUNTERS) | set(GAUGES) | set(SCRAPE_SERIES)
    for h in HISTOGRAMS:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names


PROMQL_FUNCTIONS = {
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time",
    "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time",
    "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan",
    "tanh", "deg", "rad", "pi",
}
PROMQL_KEYWORDS = {
    "and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}
# Variables Grafana defines itself, with a value that keeps the query valid PromQL.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "15000",
    "__all": "x",
}

VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS_RE = re.compile(r"\{[^{}]*\}")
RANGE_RE = re.compile(r"\[[^\[\]]*\]")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENT_RE = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\s*\((.*)\)\s*$", re.S)


def variables_in(text):
    """Names of the Grafana variables a query refers to."""
    return {next(g for g in m.groups() if g) for m in VARIABLE_RE.finditer(text)}


def fill_variables(text):
    """Replaces Grafana variables by values that keep a query valid PromQL."""

    def value(m):
        name = next(g for g in m.groups() if g)
        return GRAFANA_BUILTINS.get(name, "x")

    return VARIABLE_RE.sub(value, text)


def parse_query(expr):
    """Returns (metric names, function names) used by a PromQL expression."""
    text = fill_variables(expr)
    text = STRING_RE.sub('""', text)
    text = MATCHERS_RE.sub(" ", text)
    text = RANGE_RE.sub(" ", text)
    text = GROUPING_RE.sub(" ", text)
    metrics, functions = set(), set()
    for m in IDENT_RE.finditer(text):
        name = m.group(0)
        if re.match(r"\s*\(", text[m.end():]):
            functions.add(name)
        elif name.lower() not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions


def variable_query_metrics(query):
    """Metric names in a Prometheus template-variable query such as label_values(m, l)."""
    m = LABEL_VALUES_RE.match(query)
    if m:
        args = m.group(1)
        if "," not in STRING_RE.sub('""', args):
            return set()  # label_values(label): no metric
        selector = args.rsplit(",", 1)[0]
        return parse_query(selector)[0]
    m = re.match(r"^\s*query_result\s*\((.*)\)\s*$", query, re.S)
    if m:
        return parse_query(m.group(1))[0]
    return set()


def recording_rules(rules_dir):
    names = set()
    for name in sorted(os.listdir(rules_dir)):
        if name.endswith((".yml", ".yaml")):
            with open(os.path.join(rules_dir, name), encoding="utf-8") as f:
                for line in f:
                    m = re.match(r"^\s*(?:-\s*)?record:\s*['\"]?([A-Za-z_:][\w:]*)", line)
                    if m:
                        names.add(m.group(1))
    return names


def provisioned_datasources(datasources_dir):
    """uid -> type of every data source in the provisioning files (a small YAML subset:
    the `datasources:` list with `uid:` and `type:` keys on its items)."""
    uids = {}
    for name in sorted(os.listdir(datasources_dir)):
        if not name.endswith((".yml", ".yaml")):
            continue
        with open(os.path.join(datasources_dir, name), encoding="utf-8") as f:
            text = f.read()
        block = re.search(r"^datasources:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", text, re.M)
        if not block:
            continue
        body = block.group(1)
        indents = [len(m.group(1)) for m in re.finditer(r"^( *)- ", body, re.M)]
        if not indents:
            continue
        item_indent = min(indents)
        key_indent = " " * (item_indent + 2)
        for item in re.split(r"^ {%d}- " % item_indent, body, flags=re.M)[1:]:
            item = key_indent + item  # the first key sits where the dash was
            uid = re.search(r"^%suid:\s*['\"]?([\w-]+)" % key_indent, item, re.M)
            kind = re.search(r"^%stype:\s*['\"]?([\w-]+)" % key_indent, item, re.M)
            if uid:
                uids[uid.group(1)] = kind.group(1) if kind else None
    return uids


def all_panels(panels):
    for p in panels:
        yield p
        # collapsed rows keep their panels inside
        yield from all_panels(p.get("panels") or [])


class Checker:
    def __init__(self, known_metrics, datasources):
        self.known = known_metrics
        self.datasources = datasources
        self.errors = []
        self.queries = []  # (where, expr) of every Prometheus query, for promtool
        self.uids = {}
        self.panel_count = 0

    def error(self, where, message):
        self.errors.append(f"{where}: {message}")

    def check_query(self, where, expr, defined_vars, metrics=None, functions=None):
        if metrics is None:
            metrics, functions = parse_query(expr)
        for name in sorted(metrics - self.known):
            self.error(where, f"unknown metric {name!r} in {expr!r}")
        for name in sorted((functions or set()) - PROMQL_FUNCTIONS):
            self.error(where, f"unknown function {name!r} in {expr!r}")
        for name in sorted(variables_in(expr) - defined_vars - set(GRAFANA_BUILTINS)):
            self.error(where, f"undefined variable ${name} in {expr!r}")

    def datasource_kind(self, where, ds):
        if not isinstance(ds, dict) or not ds.get("uid"):
            self.error(where, "no datasource with a uid")
            return None
        uid = ds["uid"]
        if uid not in self.datasources:
            self.error(where, f"datasource uid {uid!r} is not provisioned (known: {sorted(self.datasources)})")
            return None
        kind = self.datasources[uid]
        if ds.get("type") and kind and ds["type"] != kind:
            self.error(where, f"datasource {uid!r} has type {kind!r}, not {ds['type']!r}")
        return kind

    def check_dashboard(self, path, dash):
        name = os.path.basename(path)
        if not isinstance(dash, dict):
            self.error(name, "not a JSON object")
            return
        uid = dash.get("uid")
        if not isinstance(uid, str) or not uid:
            self.error(name, "no uid")
        elif uid in self.uids:
            self.error(name, f"uid {uid!r} is also used by {self.uids[uid]}")
        else:
            self.uids[uid] = name
        if not dash.get("title"):
            self.error(name, "no title")
        if dash.get("schemaVersion") != 39:
            self.error(name, f"schemaVersion is {dash.get('schemaVersion')!r}, expected 39")
        panels = dash.get("panels")
        if not isinstance(panels, list) or not panels:
            self.error(name, "no panels")
            return

        defined_vars = set()
        for var in (dash.get("templating") or {}).get("list", []):
            vname = var.get("name")
            if not vname:
                self.error(name, "template variable without a name")
                continue
            defined_vars.add(vname)
        for var in (dash.get("templating") or {}).get("list", []):
            if var.get("type") != "query":
                continue
            where = f"{name}: variable ${var.get('name')}"
            kind = self.datasource_kind(where, var.get("datasource"))
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            if not query:
                self.error(where, "empty query")
            elif kind == "prometheus":
                self.check_query(where, query, defined_vars, variable_query_metrics(query), set())

        ids = set()
        boxes = []
        for panel in all_panels(panels):
            self.panel_count += 1
            title = panel.get("title") or "(untitled)"
            where = f"{name}: panel {panel.get('id')} {title!r}"
            pid = panel.get("id")
            if not isinstance(pid, int):
                self.error(where, "no integer id")
            elif pid in ids:
                self.error(where, "duplicate panel id")
            else:
                ids.add(pid)
            grid = panel.get("gridPos")
            if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "xywh"):
                self.error(where, "no gridPos with integer x, y, w, h")
            elif grid["x"] < 0 or grid["y"] < 0 or grid["w"] < 1 or grid["h"] < 1 or grid["x"] + grid["w"] > 24:
                self.error(where, f"gridPos {grid} is outside the 24-column grid")
            else:
                for other_where, g in boxes:
                    if (grid["x"] < g["x"] + g["w"] and g["x"] < grid["x"] + grid["w"]
                            and grid["y"] < g["y"] + g["h"] and g["y"] < grid["y"] + grid["h"]):
                        self.error(where, f"overlaps {other_where}")
                boxes.append((where, grid))
            if panel.get("type") == "row":
                continue
            if not panel.get("type"):
                self.error(where, "no type")
            panel_kind = self.datasource_kind(where, panel.get("datasource"))
            targets = panel.get("targets")
            if not isinstance(targets, list) or not targets:
                self.error(where, "no targets")
                continue
            refids = set()
            for target in targets:
                ref = target.get("refId")
                twhere = f"{where} target {ref}"
                if not ref:
                    self.error(where, "target without refId")
                elif ref in refids:
                    self.error(twhere, "duplicate refId")
                refids.add(ref)
                kind = panel_kind
                if "datasource" in target:
                    kind = self.datasource_kind(twhere, target["datasource"])
                if kind != "prometheus":
                    continue
                expr = target.get("expr")
                if not isinstance(expr, str) or not expr.strip():
                    self.error(twhere, "empty expr")
                    continue
                self.check_query(twhere, expr, defined_vars)
                self.queries.append((twhere, expr))

    def check_files(self, dashboards_dir):
        files = sorted(f for f in os.listdir(dashboards_dir) if f.endswith(".json"))
        if not files:
            self.error(dashboards_dir, "no dashboard JSON files")
        for f in files:
            path = os.path.join(dashboards_dir, f)
            try:
                with open(path, encoding="utf-8") as fh:
                    dash = json.load(fh)
            except (OSError, ValueError) as e:
                self.error(f, f"cannot be read as JSON: {e}")
                continue
            self.check_dashboard(path, dash)
        return len(files)

    def check_syntax(self, promtool):
        """Lets promtool parse every query, variables filled in, as recording rules."""
        if not self.queries:
            return
        lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
        for i, (_, expr) in enumerate(self.queries):
            lines.append(f"      - record: dashboard_query_{i}")
            lines.append(f"        expr: {json.dumps(fill_variables(expr))}")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "dashboard-queries.yml")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            proc = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        output = (proc.stdout + proc.stderr).strip()
        found = False
        for i, (where, expr) in enumerate(self.queries):
            # promtool names the failing rule: ..., "dashboard_query_<i>": <parse error>
            m = re.search(r'"dashboard_query_%d": (.*)' % i, output)
            if m:
                found = True
                self.error(where, f"does not parse: {m.group(1)} in {expr!r}")
        if not found:
            self.error("promtool", f"check rules failed on the dashboard queries:\n{output}")


def run(monitoring_dir, promtool=None):
    known = exported_series() | recording_rules(os.path.join(monitoring_dir, "rules"))
    datasources = provisioned_datasources(os.path.join(monitoring_dir, "grafana", "provisioning", "datasources"))
    checker = Checker(known, datasources)
    files = checker.check_files(os.path.join(monitoring_dir, "grafana", "dashboards"))
    if promtool:
        checker.check_syntax(promtool)
    return checker, files


def main(argv=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("monitoring_dir", nargs="?", default=here)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--promtool", help="promtool used to parse every query (default: from PATH)")
    group.add_argument("--no-promtool", action="store_true", help="skip the PromQL parse check")
    args = parser.parse_args(argv)
    promtool = None if args.no_promtool else (args.promtool or shutil.which("promtool"))
    checker, files = run(args.monitoring_dir, promtool)
    for e in checker.errors:
        print(e, file=sys.stderr)
    parsed = "each parsed by promtool" if promtool else "promtool not found, not parsed"
    print(f"{files} dashboards, {checker.panel_count} panels, {len(checker.queries)} queries ({parsed}): "
          f"{len(checker.errors)} problems")
    return 1 if checker.errors else 0


if __name__ == "__main__":
    sys.exit(main())
