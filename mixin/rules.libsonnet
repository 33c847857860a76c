// The rule groups of alerts/poolwatch.rules.yml as a function of _config; the tests
// check that every _config gives what `poolwatch alerts --set ...` gives.
local lib = import 'lib.libsonnet';

local used = 'poolwatch_used_connection_seconds_total';
local cmax = 'poolwatch_connections_max';
local conns = 'poolwatch_connections';
local waits = 'poolwatch_waits_total';
local errors = 'poolwatch_errors_total';
local acquire = 'poolwatch_acquire_seconds';
local connect = 'poolwatch_connect_seconds';
local lifetime = 'poolwatch_connection_lifetime_seconds';
local leaked = 'poolwatch_leaked_connections';
local activity = 'poolwatch_checkout_activity_seconds_total';
local oldest = 'poolwatch_oldest_wait_seconds';
local smax = 'poolwatch_server_max_connections';
local info = 'poolwatch_pool_info';
local infoLabels = 'host, port, dbname, application_name, version';
local churnReasons = 'max_lifetime|max_idle|broken|check_failed|reset_failed';
local saturation = 'poolwatch:saturation:mean_ratio';
local fleetRatio = 'poolwatch:fleet_budget:ratio';
local targetPools = 'poolwatch:target_pools:known';
local where = 'pool {{ $labels.pool }} on {{ $labels.instance }}';

local recording(c) =
  local w = c.window;
  [
    // an unbounded null pool (max 0) has no ratio
    { record: saturation, expr: 'rate(%s[%s]) / (%s > 0)' % [used, w, cmax] },
    { record: 'poolwatch:waits:rate', expr: 'rate(%s[%s])' % [waits, w] },
  ] + [
    {
      record: 'poolwatch:acquire_seconds:p' + q,
      expr: 'histogram_quantile(0.%s, sum without (%s) (rate(%s_bucket[%s])))'
            % [q, lib.labels(['outcome', c.drop_labels]), acquire, w],
    }
    for q in ['50', '95', '99']
  ] + [
    {
      record: 'poolwatch:errors:rate',
      expr: 'sum without (%s) (rate(%s[%s]))' % [lib.labels(['sqlstate_class', c.drop_labels]), errors, w],
    },
    {
      record: 'poolwatch:connects:rate',
      expr: 'sum without (%s) (rate(%s_count[%s]))' % [lib.labels([c.drop_labels]), connect, w],
    },
    // Remembered while the target is discovered and down, so a long outage keeps its alert.
    {
      record: targetPools,
      expr: 'max without (%s) (max_over_time(%s[%s]))\nor (%s and ignoring (pool) (up == 0))'
            % [infoLabels, info, c.target_memory, targetPools],
    },
  ];

local saturationAlert(c, threshold, for_, severity) =
  lib.alert(
    c, 'PoolSaturationHigh', '%s > %s' % [saturation, lib.num(threshold)], for_, severity,
    'Pool {{ $labels.pool }} is {{ $value | humanizePercentage }} saturated',
    'Over the last ' + c.window + ', ' + where + ' used {{ $value | humanizePercentage }} of its'
    + ' connections on average (threshold ' + lib.pct(threshold) + '). Requests'
    + (if threshold < 0.9 then ' will soon queue for a connection.' else ' queue already.'),
  );

local alerting(c) =
  local w = c.window;
  local drop = c.drop_labels;
  local hw = c.held_idle_window;
  local heldBy = 'sum without (%s)' % lib.labels(['activity', drop]);
  local heldWaits = if lib.labels([drop]) == '' then 'increase(%s[%s])' % [waits, hw]
                    else 'sum without (%s) (increase(%s[%s]))' % [lib.labels([drop]), waits, hw];
  local connectErrors = 'sum without (%s) (increase(%s{kind="connect"}[%s])) > 0'
                        % [lib.labels(['kind, sqlstate_class', drop]), errors, w];
  local churnSel = '{reason=~"%s"}' % churnReasons;
  local churnSum = 'sum without (%s)' % lib.labels(['reason', drop]);
  local cw = c.churn_window;
  [
    saturationAlert(c, c.saturation_threshold, c.saturation_for, c.saturation_severity),
    saturationAlert(c, c.saturation_critical_threshold, c.saturation_critical_for, c.saturation_critical_severity),
    lib.alert(
      c, 'PoolWaitNonZero', 'increase(%s[%s]) > %s' % [waits, w, lib.num(c.wait_count_threshold)],
      c.wait_for, c.wait_severity,
      'Requests are waiting for a connection in pool {{ $labels.pool }}',
      'About {{ $value | humanize }} requests of ' + where + ' found no idle connection'
      + ' and queued in the last ' + w + ': the pool is too small, queries are too slow, or'
      + ' traffic spiked.',
    ),
    lib.alert(
      c, 'PoolOldestWaitHigh', '%s > %s' % [oldest, lib.num(c.oldest_wait_threshold_seconds)],
      c.oldest_wait_for, c.oldest_wait_severity,
      'A request has waited {{ $value | humanizeDuration }} for a connection in pool {{ $labels.pool }}',
      'The oldest request waiting in ' + where + ' has waited {{ $value | humanizeDuration }}'
      + ' (threshold ' + lib.num(c.oldest_wait_threshold_seconds) + 's): the pool is starved and'
      + ' requests will time out next.',
    ),
    lib.alert(
      c, 'PoolAcquireTimeouts', 'increase(%s{kind="timeout"}[%s]) > 0' % [errors, w],
      c.timeout_for, c.timeout_severity,
      'Requests timed out waiting for a connection in pool {{ $labels.pool }}',
      'About {{ $value | humanize }} requests of ' + where + ' gave up waiting for a'
      + ' connection in the last ' + w + ': users are seeing errors.',
    ),
    lib.alert(
      c, 'PoolConnectErrors', connectErrors, c.connect_errors_for, c.connect_errors_severity,
      'Pool {{ $labels.pool }} fails to open connections',
      'About {{ $value | humanize }} connection attempts of ' + where + ' failed in the last ' + w + '.',
    ),
    lib.alert(
      c, 'PoolConnectErrors',
      '(%s)\nand (sum without (%s) (%s{state=~"idle|used"}) == 0)'
      % [connectErrors, lib.labels(['state', drop]), conns],
      c.connect_down_for, c.connect_down_severity,
      'Pool {{ $labels.pool }} has no connection at all and cannot open one',
      'Pool {{ $labels.pool }} on {{ $labels.instance }} holds no connection and about'
      + ' {{ $value | humanize }} connection attempts failed in the last ' + w
      + ': every request of it fails.',
    ),
    lib.alert(
      c, 'PoolConnectionLeak', '%s > 0' % leaked, c.leak_for, c.leak_severity,
      'Pool {{ $labels.pool }} has {{ $value }} connections held past leak_timeout',
      '{{ $value }} checkouts of ' + where + ' have been held longer than leak_timeout;'
      + ' the pool log shows where each was taken.',
    ),
    lib.alert(
      c, 'PoolHeldIdleInTransaction',
      '(\n  %s (rate(%s{activity="idle_in_transaction"}[%s]))\n  / %s (rate(%s[%s]))\n) > %s\nand (%s > 0)'
      % [heldBy, activity, hw, heldBy, activity, hw, lib.num(c.held_idle_share), heldWaits],
      c.held_idle_for, c.held_idle_severity,
      'Pool {{ $labels.pool }} connections sit idle in transactions while requests wait',
      'Over the last ' + hw + ', connections of ' + where + ' spent {{ $value | humanizePercentage }}'
      + ' of their checked-out time idle inside a transaction (threshold '
      + lib.pct(c.held_idle_share) + ') while requests queued: code holds transactions open'
      + ' across other work. A bigger pool will not help; the call sites on /pools say who.',
    ),
    lib.alert(
      c, 'PoolConnectionChurn',
      '(\n  %s (rate(%s_sum%s[%s]))\n  / %s (rate(%s_count%s[%s]))\n) < %s\nand (%s (rate(%s_count%s[%s])) * 60 >= %s)'
      % [churnSum, lifetime, churnSel, cw, churnSum, lifetime, churnSel, cw,
         lib.num(c.churn_min_mean_lifetime_seconds), churnSum, lifetime, churnSel, cw,
         lib.num(c.churn_min_closes_per_minute)],
      c.churn_for, c.churn_severity,
      'Connections of pool {{ $labels.pool }} live only {{ $value | humanizeDuration }}',
      'Connections of ' + where + ' closed for expiry or failure lived'
      + ' {{ $value | humanizeDuration }} on average over ' + cw + ': a connection'
      + ' storm, a broken network, or max_lifetime/max_idle set far too low.',
    ),
    lib.alert(
      c, 'PoolwatchTargetDown',
      '%s and ignoring (pool) (up == 0)' % [targetPools],
      c.target_down_for, c.target_down_severity,
      'Cannot scrape pool {{ $labels.pool }} on {{ $labels.instance }}',
      'Prometheus still discovers {{ $labels.instance }} (job {{ $labels.job }}), which'
      + ' exports pool {{ $labels.pool }}, but cannot scrape it: the process is down or hung,'
      + ' or its exporter is.',
    ),
    lib.alert(
      c, 'PoolwatchJobAbsent',
      'count by (%s) (max_over_time(%s[%s]))\nunless on (%s) count by (%s) (up)'
      % [lib.labels([c.job_labels]), info, c.target_memory, lib.labels([c.job_labels]),
         lib.labels([c.job_labels])],
      c.job_absent_for, c.job_absent_severity,
      'Job {{ $labels.job }} exporting poolwatch pools has disappeared',
      'No target of job {{ $labels.job }} is discovered any more, though it exported'
      + ' {{ $value }} pools in the last ' + c.target_memory + ': the whole service is gone'
      + ' or Prometheus lost its service discovery.',
    ),
  ];

local poolServer(c, series) =
  local infoPart = std.filter(
    function(n) std.member(std.split(infoLabels, ', '), n),
    std.split(lib.labels([c.server_labels]), ', ')
  );
  '%s\n  * ignoring (%s) group_left (%s)\n  %s'
  % [lib.dedup(c, series), infoLabels, std.join(', ', infoPart), lib.dedup(c, info)];

local fleet(c) =
  local server = lib.labels([c.server_labels]);
  [
    {
      record: fleetRatio,
      expr: 'sum by (%s) (\n  %s\n)\n/ max by (%s) (\n  %s\n)'
            % [server, poolServer(c, cmax), server, poolServer(c, smax)],
    },
    lib.alert(
      c, 'PoolFleetOverServerBudget', '%s > %s' % [fleetRatio, lib.num(c.fleet_threshold)],
      c.fleet_for, c.fleet_severity,
      "Pools on {{ $labels.host }}:{{ $labels.port }} may open {{ $value | humanizePercentage }} of the server's connections",
      'The max_size of every pool using {{ $labels.host }}:{{ $labels.port }}, across'
      + ' every instance, adds up to {{ $value | humanizePercentage }} of the connections'
      + ' the server allows (threshold ' + lib.pct(c.fleet_threshold) + '). Under load the server'
      + ' will refuse connections; the fleet dashboard lists the pools.',
    ),
  ];

{
  recording(c):: { name: 'poolwatch-recording', interval: c.interval, rules: recording(c) },
  alerting(c):: { name: 'poolwatch-alerts', interval: c.interval, rules: alerting(c) },
  fleet(c):: { name: 'poolwatch-fleet', interval: c.interval, rules: fleet(c) },
}
