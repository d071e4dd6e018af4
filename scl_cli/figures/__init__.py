"""Pictures of runs and models: training curves (`curves`). Drawn with matplotlib's Agg backend
(no display needed); nothing here knows the model."""
