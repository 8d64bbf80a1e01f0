"""How a pipeline run is started and shown: the whole DAG under kfp.local (local.py), what the
terminal shows meanwhile and at the end (console.py, summary.py), and submission to a KFP cluster
(cluster.py). pipeline.py's CLI calls these; the steps never import them."""
