// poolwatch monitoring mixin: `_config` names are the settings of `poolwatch alerts --set`
// (see config.libsonnet and `poolwatch alerts --list`). Override them like this:
//
//   (import 'poolwatch/mixin.libsonnet') + { _config+:: { saturation_threshold: 0.9 } }
//
// prometheusRules holds the recording rules, prometheusAlerts the per-pool alerts and the
// fleet group (poolwatch-fleet: evaluate it on the global ruler, see docs/fleet.md).
local rules = import 'rules.libsonnet';

{
  _config+:: (import 'config.libsonnet'),

  prometheusRules+:: { groups+: [rules.recording($._config)] },
  prometheusAlerts+:: { groups+: [rules.alerting($._config), rules.fleet($._config)] },
  grafanaDashboards+:: {
    'poolwatch.json': import '../dashboards/poolwatch.json',
    'poolwatch-fleet.json': import '../dashboards/poolwatch-fleet.json',
  },
}
