"""Detection figures on labelled data: scoring maths, data adapters, baselines, reports."""
