"""Detection figures on labelled data: scoring maths, data adapters, runners, baselines, reports.

Modules: :mod:`~streamwatch.evaluation.scoring` (the pure maths below),
:mod:`~streamwatch.evaluation.datasets` (simulator output and NAB files as labelled data sets),
:mod:`~streamwatch.evaluation.runs` (our detector and the baselines on a data set),
:mod:`~streamwatch.evaluation.baselines`, :mod:`~streamwatch.evaluation.nab` (NAB scoring and
data) and :mod:`~streamwatch.evaluation.report` (Markdown and figures). The command line is
``streamwatch evaluate`` (:mod:`streamwatch.commands.evaluate`).

Our detector and every baseline are scored the same way:

- **event recall**: the fraction of labelled events with at least one alert on the same
  sensor within ``[start, end + tolerance]``;
- **alert precision**: the fraction of alerts that fall in some event's
  ``[start, end + tolerance]``; **event F1** is their harmonic mean. No point adjustment:
  one alert is one alert, however long the event;
- **false alarms per 100,000 normal readings**: alerts matching no event, per 10⁵ readings
  labelled normal (readings in an event's tolerance tail are not counted as normal). Pooled
  over sensors this is also the rate per sensor per 10⁵ of its normal readings, the unit of
  the quality target; ``report.json`` keeps the per-10⁴ figure too;
- **mean detection delay**: first matching alert minus event start, seconds;
- **AUC-PR**: average precision of the per-reading scores against the per-reading labels,
  threshold-free (tolerance tails left out); compare it with the positive rate shown beside
  it, which is what a random scorer gets.

Everything is also given per anomaly kind (recall, delay, AUC-PR: precision has no kind).
The first ``n_train`` readings of every sensor (the detector's warm-up) are training data:
never scored, for any detector. On NAB data the training readings are the probationary
period, and the NAB score (:mod:`streamwatch.evaluation.nab`) is reported for its three
profiles.
"""
