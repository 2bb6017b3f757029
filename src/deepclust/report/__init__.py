"""What a user looks at: a self-contained HTML report of a run folder, and its figures.

:func:`write_report` reads any run folder (``deepclust cluster`` or ``deepclust train`` of
an end-to-end method) and writes ``RUN_DIR/report/``::

    report.html     one file, thumbnails and figures embedded, opens offline
    map.png         2-D t-SNE map of the embeddings, by cluster (and by true class)
    sizes.png       cluster sizes
    montages.png    the most typical images of the largest clusters
    confusion.png   clusters matched to classes (when the run knew the classes)

Large runs stay light: the map uses at most ``map_points`` images, the montages the
``per_cluster`` images nearest their centre in at most ``max_clusters`` clusters, so the
HTML file's size does not grow with the number of images
(``benchmarks/report_scale.py`` measures it).
"""

from deepclust.report.build import ReportOptions, cluster_montages, embedding_map, match_clusters, write_report

__all__ = ["ReportOptions", "write_report", "embedding_map", "cluster_montages", "match_clusters"]
