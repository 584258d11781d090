"""ratio-cnn: one training ratio, one job — storage, data, model, train, evaluate, plots, report, cli."""
