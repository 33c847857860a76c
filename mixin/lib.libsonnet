// Helpers shared by the rules: label lists, replica de-duplication, alert shape.
{
  // "a, b" strings (as in the generator's settings) joined, blanks and repeats dropped.
  labels(groups)::
    local names = std.filter(
      function(n) n != '',
      std.map(function(n) std.stripChars(n, ' '), std.flattenArrays([std.split(g, ',') for g in groups]))
    );
    local unique = std.foldl(function(acc, n) if std.member(acc, n) then acc else acc + [n], names, []);
    std.join(', ', unique),

  pct(x):: std.toString(std.round(x * 100)) + '%',

  // six significant digits, as the generator prints its thresholds
  num(x):: '%g' % x,

  dedup(c, series):: 'max without (%s) (%s)' % [self.labels([c.replica_labels]), series],

  alert(c, name, expr, for_, severity, summary, description)::
    { alert: name, expr: expr }
    + (if std.member(['0s', '0m', '0'], for_) then {} else { 'for': for_ })
    + {
      labels: { severity: severity } + c.extra_labels,
      annotations: {
        summary: summary,
        description: description,
        runbook_url: c.runbook_base + '#' + std.asciiLower(name),
      },
    },
}
