//! The packaging files an operator installs beside the binary: the Prometheus
//! alert rules, the Grafana dashboard and the systemd unit.
//!
//! Every metric an alert or a panel queries must be one blockferry exports:
//! [`METRICS`] is that list (names, types, labels), also documented in
//! `docs/operator-guide.md`. PromQL is not parsed fully: the checks find every
//! `blockferry_…` identifier, the label names of its matchers, the labels of
//! `by (…)` / `without (…)` / `on (…)` / `ignoring (…)` clauses and the
//! durations of range selectors, and check brackets balance.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::common::metrics_list::Kind::Histogram;
use crate::common::metrics_list::{METRICS, Metric};

/// Labels every scraped series has (target labels Prometheus adds).
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// The workspace root.
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A file of the workspace, by relative path.
fn read(path: &str) -> String {
    let full = workspace().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The family a series name belongs to, and whether it is a histogram's `_bucket` series.
fn family(series: &str) -> Option<(&'static Metric, bool)> {
    if let Some(metric) = METRICS.iter().find(|m| m.name == series) {
        return Some((metric, false));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        let metric = METRICS.iter().find(|m| m.name == base && m.kind == Histogram)?;
        Some((metric, *suffix == "_bucket"))
    })
}

/// Whether `text` is a Prometheus duration: `1y2w3d4h5m6s7ms`, units in this
/// order, each at most once, at least one.
fn is_duration(text: &str) -> bool {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "ms", "m", "s"];
    // Position of each unit in the required order (ms comes last).
    let order = |unit: &str| ["y", "w", "d", "h", "m", "s", "ms"].iter().position(|u| *u == unit);
    let mut rest = text;
    let mut last: Option<usize> = None;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = UNITS.iter().find(|u| rest.starts_with(*u)) else { return false };
        let position = order(unit).unwrap();
        if last.is_some_and(|l| l >= position) {
            return false;
        }
        last = Some(position);
        rest = &rest[unit.len()..];
    }
    true
}

/// What an expression queries.
#[derive(Debug, Default)]
struct Expr {
    /// Every `blockferry_…` series name, in order.
    series: Vec<String>,
    /// Problems found.
    problems: Vec<String>,
}

impl Expr {
    /// The labels the expression's series can carry (plus the target labels).
    fn labels(&self) -> BTreeSet<&'static str> {
        let mut labels: BTreeSet<&'static str> = TARGET_LABELS.iter().copied().collect();
        for s in &self.series {
            if let Some((metric, bucket)) = family(s) {
                labels.extend(metric.labels.iter().copied());
                if bucket {
                    labels.insert("le");
                }
            }
        }
        labels
    }
}

/// Whether `c` may appear in a PromQL identifier.
fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Tracks whether a scan of PromQL text is inside a string literal.
#[derive(Default)]
struct Quotes {
    quote: Option<char>,
    escaped: bool,
}

impl Quotes {
    /// Feed the next character; whether it belongs to a string literal
    /// (its quotes included).
    fn inside(&mut self, c: char) -> bool {
        if let Some(q) = self.quote {
            match c {
                _ if self.escaped => self.escaped = false,
                '\\' => self.escaped = true,
                _ if c == q => self.quote = None,
                _ => {}
            }
            return true;
        }
        if matches!(c, '"' | '\'' | '`') {
            self.quote = Some(c);
            return true;
        }
        false
    }

    /// Whether a string literal is still open.
    fn open(&self) -> bool {
        self.quote.is_some()
    }
}

/// Check that `(`, `[` and `{` balance outside string literals.
fn check_brackets(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut quotes = Quotes::default();
    for (i, c) in expr.char_indices() {
        if quotes.inside(c) {
            continue;
        }
        match c {
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return Err(format!("unbalanced `{c}` at byte {i} of `{expr}`"));
                }
            }
            _ => {}
        }
    }
    if quotes.open() {
        return Err(format!("unterminated string in `{expr}`"));
    }
    if let Some(open) = stack.last() {
        return Err(format!("unclosed `{open}` in `{expr}`"));
    }
    Ok(())
}

/// The text between `open` at byte `start` and its matching `close`, and the
/// byte after it (brackets balanced, as checked before).
fn enclosed(expr: &str, start: usize, open: char, close: char) -> (&str, usize) {
    let mut depth = 0;
    let mut quotes = Quotes::default();
    for (i, c) in expr[start..].char_indices() {
        if quotes.inside(c) {
            continue;
        }
        match c {
            _ if c == open => depth += 1,
            _ if c == close => {
                depth -= 1;
                if depth == 0 {
                    return (&expr[start + 1..start + i], start + i + 1);
                }
            }
            _ => {}
        }
    }
    (&expr[start + 1..], expr.len())
}

/// Split `text` at commas outside string literals.
fn split_commas(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut from, mut quotes) = (0, Quotes::default());
    for (i, c) in text.char_indices() {
        if quotes.inside(c) {
            continue;
        }
        if c == ',' {
            parts.push(&text[from..i]);
            from = i + 1;
        }
    }
    parts.push(&text[from..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

/// The label name a matcher (`bucket=~"x"`) starts with.
fn matcher_label(matcher: &str) -> &str {
    let end = matcher.find(|c: char| !ident_char(c)).unwrap_or(matcher.len());
    &matcher[..end]
}

/// Scan a PromQL expression (or a Grafana `label_values(…)` query).
fn scan(expr: &str) -> Expr {
    let mut out = Expr::default();
    if let Err(e) = check_brackets(expr) {
        out.problems.push(e);
        return out;
    }
    // (metric series, matcher labels) and grouping labels, checked once all series are known.
    let mut matchers: Vec<(String, Vec<String>)> = Vec::new();
    let mut grouping: Vec<String> = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let skip_spaces = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' || c == '\'' || c == '`' {
            // Skip a string literal.
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] as char != c {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '[' {
            let (inside, next) = enclosed(expr, i, '[', ']');
            for part in inside.split(':').map(str::trim).filter(|p| !p.is_empty()) {
                if !part.starts_with('$') && !is_duration(part) {
                    out.problems.push(format!("`{part}` in `[{inside}]` is not a duration in `{expr}`"));
                }
            }
            i = next;
        } else if c.is_ascii_digit() || c == '.' {
            // A number (`0.5`, `1e3`): not an identifier.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else if ident_char(c) {
            let start = i;
            while i < bytes.len() && ident_char(bytes[i] as char) {
                i += 1;
            }
            let ident = &expr[start..i];
            let after = skip_spaces(i);
            let opens = |ch: u8| after < bytes.len() && bytes[after] == ch;
            if ident.starts_with("blockferry_") {
                out.series.push(ident.to_string());
                let mut labels = Vec::new();
                if opens(b'{') {
                    let (inside, next) = enclosed(expr, after, '{', '}');
                    labels = split_commas(inside).into_iter().map(|m| matcher_label(m).to_string()).collect();
                    i = next;
                }
                matchers.push((ident.to_string(), labels));
            } else if matches!(ident, "by" | "without" | "on" | "ignoring" | "group_left" | "group_right")
                && opens(b'(')
            {
                let (inside, next) = enclosed(expr, after, '(', ')');
                grouping.extend(split_commas(inside).into_iter().map(str::to_string));
                i = next;
            } else if opens(b'{') {
                // Another metric's matchers (`up{job="blockferry"}`): not ours to check.
                i = enclosed(expr, after, '{', '}').1;
            }
        } else {
            i += 1;
        }
    }
    for s in &out.series {
        if family(s).is_none() {
            out.problems.push(format!("`{s}` is not a metric blockferry exports (see METRICS) in `{expr}`"));
        }
    }
    for (series, labels) in &matchers {
        let Some((metric, bucket)) = family(series) else { continue };
        for label in labels {
            let known = metric.labels.contains(&label.as_str())
                || TARGET_LABELS.contains(&label.as_str())
                || (bucket && label == "le");
            if !known {
                out.problems.push(format!("`{series}` has no label `{label}` in `{expr}`"));
            }
        }
    }
    let available = out.labels();
    for label in &grouping {
        if !available.contains(label.as_str()) {
            out.problems.push(format!("grouping label `{label}` is on none of the series of `{expr}`"));
        }
    }
    out
}

/// `scan(expr)`, failing the test on any problem; returns the series queried.
fn check_expr(what: &str, expr: &str) -> Expr {
    let scanned = scan(expr);
    assert!(scanned.problems.is_empty(), "{what}: {}", scanned.problems.join("; "));
    scanned
}

/// The `$labels.NAME` references of an alert template.
fn template_labels(text: &str) -> Vec<&str> {
    text.match_indices("$labels.")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            &rest[..rest.find(|c: char| !ident_char(c)).unwrap_or(rest.len())]
        })
        .collect()
}

/// A string field of a YAML mapping.
fn yaml_str<'a>(value: &'a serde_yaml::Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(serde_yaml::Value::as_str)
}

/// The alert rules, parsed.
fn alert_rules() -> serde_yaml::Value {
    let text = read("packaging/prometheus/blockferry-alerts.yml");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("blockferry-alerts.yml is not valid YAML: {e}"))
}

/// Every `(group, rule)` of the rule file.
fn rules(file: &serde_yaml::Value) -> Vec<(String, serde_yaml::Value)> {
    let mapping = file.as_mapping().expect("the rule file is a mapping");
    let keys: Vec<_> = mapping.keys().filter_map(serde_yaml::Value::as_str).collect();
    assert_eq!(keys, ["groups"], "a rule file has one top-level key, `groups`");
    let groups = file["groups"].as_sequence().expect("`groups` is a list");
    assert!(!groups.is_empty(), "no rule groups");
    let mut names = BTreeSet::new();
    let mut all = Vec::new();
    for group in groups {
        let name = yaml_str(group, "name").expect("every group has a `name`").to_string();
        assert!(names.insert(name.clone()), "group `{name}` appears twice");
        let rules = group.get("rules").and_then(serde_yaml::Value::as_sequence);
        let rules = rules.unwrap_or_else(|| panic!("group `{name}` has no `rules` list"));
        assert!(!rules.is_empty(), "group `{name}` has no rules");
        all.extend(rules.iter().map(|r| (name.clone(), r.clone())));
    }
    all
}

#[test]
fn alert_rules_have_the_rule_file_shape_and_query_only_exported_metrics() {
    let file = alert_rules();
    let mut alerts = BTreeSet::new();
    for (group, rule) in rules(&file) {
        let alert = yaml_str(&rule, "alert").unwrap_or_else(|| panic!("a rule of group `{group}` has no `alert`"));
        assert!(alerts.insert(alert.to_string()), "alert `{alert}` is defined twice");
        let keys: Vec<&str> = rule.as_mapping().unwrap().keys().filter_map(serde_yaml::Value::as_str).collect();
        for key in &keys {
            assert!(
                ["alert", "expr", "for", "keep_firing_for", "labels", "annotations"].contains(key),
                "{alert}: unknown key `{key}`"
            );
        }
        let expr = yaml_str(&rule, "expr").unwrap_or_else(|| panic!("{alert}: no `expr` string"));
        let period = yaml_str(&rule, "for").unwrap_or_else(|| panic!("{alert}: no `for` string"));
        assert!(is_duration(period), "{alert}: `for: {period}` is not a Prometheus duration");
        let severity = rule.get("labels").and_then(|l| yaml_str(l, "severity"));
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{alert}: labels.severity is {severity:?}, not critical or warning"
        );
        let scanned = check_expr(alert, expr);
        let labels = scanned.labels();
        let annotations = rule.get("annotations").unwrap_or_else(|| panic!("{alert}: no annotations"));
        for key in ["summary", "description"] {
            let text = yaml_str(annotations, key).unwrap_or_else(|| panic!("{alert}: no annotations.{key}"));
            assert!(text.trim().len() > 10, "{alert}: annotations.{key} says nothing");
            for label in template_labels(text) {
                assert!(
                    labels.contains(label),
                    "{alert}: annotations.{key} uses $labels.{label}, which `{expr}` lacks"
                );
            }
        }
    }
    // The conditions the operator guide documents are all covered.
    for wanted in [
        "blockferry_upload_failed_total",
        "blockferry_upload_hash_mismatch_total",
        "blockferry_upload_lag_seconds",
        "blockferry_buffer_backpressure",
        "blockferry_buffer_saturation_ratio",
        "blockferry_publish_connected",
        "blockferry_plugin_errors_total",
        "blockferry_ingest_publisher_connected",
        "blockferry_ready",
    ] {
        let used =
            rules(&file).iter().any(|(_, r)| scan(yaml_str(r, "expr").unwrap()).series.iter().any(|s| s == wanted));
        assert!(used, "no alert on {wanted}");
    }
}

#[test]
fn the_operator_guide_documents_every_metric_and_alert() {
    let guide = read("docs/operator-guide.md");
    for metric in METRICS {
        assert!(
            guide.contains(&format!("`{}", metric.name)),
            "docs/operator-guide.md does not describe {}",
            metric.name
        );
    }
    for (_, rule) in rules(&alert_rules()) {
        let alert = yaml_str(&rule, "alert").unwrap();
        assert!(guide.contains(alert), "docs/operator-guide.md does not describe the alert {alert}");
    }
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("`panels` is a list") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

#[test]
fn the_dashboard_parses_and_every_panel_queries_exported_metrics() {
    let text = read("packaging/grafana/blockferry-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let inputs = dashboard["__inputs"].as_array().expect("`__inputs` is a list");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input"
    );
    let schema = dashboard["schemaVersion"].as_u64().expect("a schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()), "the dashboard has no title");

    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel has no title: {panel}");
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("panel `{title}` has no id"));
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "panel `{title}`: datasource");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel `{title}` has no targets"));
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel `{title}`: a target has no expr"));
            let scanned = check_expr(&format!("panel `{title}`"), expr);
            assert!(!scanned.series.is_empty(), "panel `{title}`: `{expr}` queries no blockferry metric");
            used.extend(scanned.series.iter().map(|s| family(s).unwrap().0.name));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating.list") {
        let query = variable["query"]["query"].as_str().or_else(|| variable["query"].as_str()).unwrap_or_default();
        check_expr(&format!("variable {}", variable["name"]), query);
    }
    for wanted in [
        "blockferry_upload_succeeded_total",
        "blockferry_upload_already_present_total",
        "blockferry_upload_failed_total",
        "blockferry_upload_hash_mismatch_total",
        "blockferry_upload_lag_seconds",
        "blockferry_upload_pending_blocks",
        "blockferry_upload_duration_seconds",
        "blockferry_buffer_saturation_ratio",
        "blockferry_buffer_backpressure",
        "blockferry_ingest_blocks_total",
        "blockferry_ingest_bytes_total",
        "blockferry_publish_ack_latency_seconds",
        "blockferry_publish_connected",
        "blockferry_plugin_errors_total",
        "blockferry_store_write_duration_seconds",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

#[test]
fn the_systemd_unit_is_sandboxed() {
    let unit = read("packaging/blockferry.service");
    let mut section = String::new();
    let mut sections = Vec::new();
    let mut service = Vec::new();
    for line in unit.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';')) {
        if line.starts_with('[') {
            section = line.to_string();
            sections.push(section.clone());
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("`{line}` is not a directive"));
        assert!(!key.contains("MemoryDenyWriteExecute"), "MemoryDenyWriteExecute breaks wasmtime's JIT: `{line}`");
        if section == "[Service]" {
            service.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"]);
    let get = |key: &str| service.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("User", "blockferry"),
        ("ExecStart", "/usr/local/bin/blockferry run --config /etc/blockferry/blockferry.toml"),
    ] {
        assert_eq!(get(key), Some(value), "[Service] {key}");
    }
    assert!(get("ReadWritePaths").is_some_and(|p| p.contains("/var/lib/blockferry")), "ReadWritePaths");
}

#[test]
fn the_checks_catch_mistakes() {
    // The checker is not vacuous.
    assert!(scan("rate(blockferry_upload_failed_total[5m]").problems[0].contains("unclosed"));
    assert!(scan("blockferry_upload_failed_total) > 0").problems[0].contains("unbalanced"));
    assert!(scan("blockferry_no_such_metric > 0").problems[0].contains("not a metric"));
    assert!(scan("blockferry_upload_lag_seconds_bucket > 0").problems[0].contains("not a metric"));
    assert!(scan("blockferry_ready{bucket=\"a\"} == 0").problems[0].contains("no label `bucket`"));
    assert!(scan("sum by (node) (blockferry_upload_pending_blocks)").problems[0].contains("grouping label"));
    assert!(scan("increase(blockferry_upload_failed_total[15x]) > 0").problems[0].contains("not a duration"));
    let ok = scan(
        "histogram_quantile(0.99, sum by (bucket, le) (rate(blockferry_upload_duration_seconds_bucket\
         {bucket=~\"a|b\", instance=~\"$instance\"}[$__rate_interval]))) > 1e3",
    );
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.series, ["blockferry_upload_duration_seconds_bucket"]);
    assert!(scan("up{job=\"blockferry_x\"} == 0").series.is_empty());
    for good in ["0s", "5m", "1h30m", "2d", "1w2d", "500ms", "1m30s500ms"] {
        assert!(is_duration(good), "{good}");
    }
    for bad in ["", "5", "m", "30m1h", "5m5m", "1.5h", "5 m"] {
        assert!(!is_duration(bad), "{bad}");
    }
    assert_eq!(template_labels("{{ $labels.bucket }} on {{ $labels.instance }}"), ["bucket", "instance"]);
}

/// Every key (and table) of the example config, commented-out optional ones
/// (`# key = value`) included.
fn example_config_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(workspace().join("examples/blockferry.toml")).unwrap();
    let (mut keys, mut tables) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        let table = line.strip_prefix('[').and_then(|l| l.split(']').next()).map(|t| t.trim_start_matches('['));
        if let Some(table) = table.filter(|t| t.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')) {
            tables.insert(table.to_string());
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            keys.insert(key.to_string());
        }
    }
    (keys, tables)
}

#[test]
fn the_operator_guide_documents_every_key_of_the_example_config() {
    let guide = std::fs::read_to_string(workspace().join("docs/operator-guide.md")).unwrap();
    let (keys, tables) = example_config_keys();
    assert!(keys.len() > 40 && keys.contains("hard_limit_bytes") && keys.contains("sha256"), "{keys:?}");
    let missing: Vec<_> = keys.iter().filter(|k| !guide.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "keys of examples/blockferry.toml not in docs/operator-guide.md: {missing:?}");
    let missing: Vec<_> = tables.iter().filter(|t| !guide.contains(&format!("[{t}]"))).collect();
    assert!(missing.is_empty(), "tables of examples/blockferry.toml not in docs/operator-guide.md: {missing:?}");
}
