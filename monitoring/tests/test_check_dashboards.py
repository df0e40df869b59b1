#!/usr/bin/env python3
"""Tests for check_dashboards.py: it must accept a sound dashboard and name each kind of
problem it is meant to catch. Standard library only: python3 test_check_dashboards.py"""

import copy
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_dashboards as cd  # noqa: E402

DATASOURCES = """apiVersion: 1
datasources:
  - name: Prometheus
    uid: prometheus
    type: prometheus
    url: http://prometheus:9090
  - name: Jaeger
    type: jaeger
    uid: jaeger
    url: http://jaeger:16686
    jsonData:
      tracesToMetrics:
        queries:
          - name: Request rate
            query: up
"""

RULES = """groups:
  - name: g
    rules:
      - record: service:kefu_grpc_server_requests:rate5m
        expr: sum by (service) (rate(kefu_grpc_server_requests_total[5m]))
"""

PROM = {"type": "prometheus", "uid": "prometheus"}


def sound_dashboard(uid="d1"):
    return {
        "uid": uid,
        "title": "t",
        "schemaVersion": 39,
        "templating": {"list": [{
            "name": "service", "type": "query", "datasource": PROM,
            "query": {"query": "label_values(kefu_grpc_server_requests_total, service)"}}]},
        "panels": [
            {"id": 1, "type": "row", "title": "r", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}, "panels": []},
            {"id": 2, "type": "timeseries", "title": "rate", "datasource": PROM,
             "gridPos": {"x": 0, "y": 1, "w": 12, "h": 8},
             "targets": [{"refId": "A", "expr":
                          'sum by (service, le) (rate(kefu_grpc_server_request_duration_seconds_bucket'
                          '{service=~"$service"}[$__rate_interval]))'}]},
            {"id": 3, "type": "stat", "title": "rule", "datasource": PROM,
             "gridPos": {"x": 12, "y": 1, "w": 12, "h": 8},
             "targets": [{"refId": "A", "expr": 'service:kefu_grpc_server_requests:rate5m{service=~"$service"}'},
                         {"refId": "B", "expr": 'sum(up{job=~"$service"}) offset 1h'}]},
        ],
    }


class Fixture(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        os.makedirs(os.path.join(self.dir, "rules"))
        os.makedirs(os.path.join(self.dir, "grafana", "provisioning", "datasources"))
        os.makedirs(os.path.join(self.dir, "grafana", "dashboards"))
        with open(os.path.join(self.dir, "rules", "r.yml"), "w") as f:
            f.write(RULES)
        with open(os.path.join(self.dir, "grafana", "provisioning", "datasources", "ds.yml"), "w") as f:
            f.write(DATASOURCES)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def write(self, name, dashboard):
        with open(os.path.join(self.dir, "grafana", "dashboards", name), "w") as f:
            f.write(dashboard if isinstance(dashboard, str) else json.dumps(dashboard))

    def errors(self, promtool=None):
        checker, _ = cd.run(self.dir, promtool)
        return checker.errors

    def assertOneError(self, dashboard, *fragments):
        self.write("d.json", dashboard)
        errors = self.errors()
        self.assertEqual(len(errors), 1, errors)
        for fragment in fragments:
            self.assertIn(fragment, errors[0])


class ParseQueryTest(unittest.TestCase):
    def test_metrics_functions_and_labels_are_told_apart(self):
        metrics, functions = cd.parse_query(
            'histogram_quantile(0.95, sum by (service, le) (rate(a_bucket{le="1", x=~"$v"}[5m])))'
            ' / on (service) group_left (version) b > bool 2 and ignoring(x) c offset 1h')
        self.assertEqual(metrics, {"a_bucket", "b", "c"})
        self.assertEqual(functions, {"histogram_quantile", "sum", "rate"})

    def test_recording_rule_names_and_strings(self):
        metrics, _ = cd.parse_query('level:m:rate5m{a="sum(x)"} or vector(0) * 1e3')
        self.assertEqual(metrics, {"level:m:rate5m"})

    def test_variables(self):
        self.assertEqual(cd.variables_in('m{a=~"$a", b="${b:regex}"}[$__range] [[c]]'),
                         {"a", "b", "__range", "c"})
        self.assertEqual(cd.fill_variables('rate(m{a=~"$a"}[$__rate_interval])'), 'rate(m{a=~"x"}[1m])')

    def test_label_values(self):
        self.assertEqual(cd.variable_query_metrics("label_values(kefu_messages_total{x=\"y\"}, tenant)"),
                         {"kefu_messages_total"})
        self.assertEqual(cd.variable_query_metrics("label_values(tenant)"), set())


class DatasourcesTest(Fixture):
    def test_uids_with_their_types(self):
        ds = cd.provisioned_datasources(os.path.join(self.dir, "grafana", "provisioning", "datasources"))
        self.assertEqual(ds, {"prometheus": "prometheus", "jaeger": "jaeger"})


class CheckDashboardTest(Fixture):
    def test_sound_dashboard_passes(self):
        self.write("d.json", sound_dashboard())
        self.assertEqual(self.errors(), [])

    def test_unknown_metric(self):
        d = sound_dashboard()
        d["panels"][1]["targets"][0]["expr"] = "rate(kefu_messages_totl[5m])"
        self.assertOneError(d, "panel 2", "unknown metric 'kefu_messages_totl'")

    def test_histogram_base_name_is_not_a_series(self):
        d = sound_dashboard()
        d["panels"][1]["targets"][0]["expr"] = "kefu_ticket_resolution_seconds"
        self.assertOneError(d, "unknown metric 'kefu_ticket_resolution_seconds'")

    def test_unknown_metric_in_variable(self):
        d = sound_dashboard()
        d["templating"]["list"][0]["query"]["query"] = "label_values(nope_total, service)"
        self.assertOneError(d, "variable $service", "unknown metric 'nope_total'")

    def test_unknown_function(self):
        d = sound_dashboard()
        d["panels"][1]["targets"][0]["expr"] = "rat(kefu_messages_total[5m])"
        self.assertOneError(d, "unknown function 'rat'")

    def test_undefined_variable(self):
        d = sound_dashboard()
        d["panels"][2]["targets"][0]["expr"] = 'up{job=~"$tenant"}'
        self.assertOneError(d, "undefined variable $tenant")

    def test_panel_without_datasource(self):
        d = sound_dashboard()
        del d["panels"][1]["datasource"]
        self.assertOneError(d, "panel 2", "no datasource")

    def test_datasource_not_provisioned(self):
        d = sound_dashboard()
        d["panels"][1]["datasource"] = {"type": "prometheus", "uid": "prom"}
        self.assertOneError(d, "'prom' is not provisioned")

    def test_datasource_type_mismatch(self):
        d = sound_dashboard()
        d["panels"][1]["datasource"] = {"type": "prometheus", "uid": "jaeger"}
        self.assertOneError(d, "has type 'jaeger'")

    def test_panel_without_targets(self):
        d = sound_dashboard()
        d["panels"][1]["targets"] = []
        self.assertOneError(d, "panel 2", "no targets")

    def test_empty_expr_and_duplicate_refid(self):
        d = sound_dashboard()
        d["panels"][2]["targets"][1]["refId"] = "A"
        self.assertOneError(d, "duplicate refId")
        d["panels"][2]["targets"][1] = {"refId": "B", "expr": " "}
        self.assertOneError(d, "empty expr")

    def test_layout(self):
        d = sound_dashboard()
        d["panels"][2]["gridPos"]["x"] = 8
        self.assertOneError(d, "panel 3", "overlaps")
        d = sound_dashboard()
        d["panels"][2]["gridPos"]["w"] = 13
        self.assertOneError(d, "outside the 24-column grid")
        d = sound_dashboard()
        del d["panels"][2]["gridPos"]
        self.assertOneError(d, "no gridPos")
        d = sound_dashboard()
        d["panels"][2]["id"] = 2
        self.assertOneError(d, "duplicate panel id")

    def test_dashboard_fields(self):
        d = sound_dashboard()
        d["schemaVersion"] = 38
        self.assertOneError(d, "schemaVersion is 38")
        d = sound_dashboard()
        del d["uid"]
        self.assertOneError(d, "no uid")
        d = sound_dashboard()
        d["panels"] = []
        self.assertOneError(d, "no panels")

    def test_uids_unique_across_files(self):
        self.write("a.json", sound_dashboard("same"))
        self.write("b.json", sound_dashboard("same"))
        errors = self.errors()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("uid 'same' is also used by a.json", errors[0])

    def test_malformed_json(self):
        self.assertOneError('{"uid": "x", ', "cannot be read as JSON")

    def test_collapsed_row_panels_are_checked(self):
        d = sound_dashboard()
        inner = copy.deepcopy(d["panels"][1])
        inner["id"] = 9
        inner["gridPos"]["y"] = 20
        inner["targets"][0]["expr"] = "missing_metric"
        d["panels"][0]["panels"] = [inner]
        d["panels"][0]["collapsed"] = True
        self.assertOneError(d, "panel 9", "unknown metric 'missing_metric'")

    @unittest.skipUnless(shutil.which("promtool"), "promtool not installed")
    def test_promtool_rejects_a_query_that_does_not_parse(self):
        d = sound_dashboard()
        d["panels"][2]["targets"][1]["expr"] = 'sum(up{job=~"$service"}'
        self.write("d.json", d)
        self.assertEqual(self.errors(), [])  # the lexical checks cannot see it ...
        errors = self.errors(shutil.which("promtool"))
        self.assertEqual(len(errors), 1, errors)  # ... promtool can, and names the panel
        self.assertIn("panel 3", errors[0])
        self.assertIn("target B: does not parse", errors[0])


class RepositoryDashboardsTest(unittest.TestCase):
    def test_the_repository_dashboards_pass(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        checker, files = cd.run(here, shutil.which("promtool"))
        self.assertEqual(checker.errors, [])
        self.assertGreaterEqual(files, 2)


if __name__ == "__main__":
    unittest.main()
