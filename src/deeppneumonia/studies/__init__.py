"""The studies behind docs/results.md: Table I (ablation), Table II (comparison), multi-label, localization."""
