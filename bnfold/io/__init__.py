"""Model files in and out: load/save with external data and staged atomic writes (``model_io``),
where an output may go (``output_paths``), data files (``data_file``), weight-free skeletons
(``skeleton``), temporary-file cleanup on signals (``interrupts``)."""
