"Past one machine, on a local Ray cluster the tests start on 127.0.0.1 with 2 workers: k-NN shards merged exactly, the embedding pipeline."
import numpy as np
import pytest

ray = pytest.importorskip('ray')
from llm_curate.knn import knn_graph, knn_graph_ray, dedupe_rows, check_embeddings, _recall
from llm_curate.embed import embed_texts, embed_texts_ray


@pytest.fixture(scope='module')
def cluster():
    started = not ray.is_initialized()
    if started: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address='127.0.0.1')
    yield ray
    if started: ray.shutdown()


def test_knn_shards_merge_exactly(cluster):
    r = np.random.default_rng(3)
    C = r.normal(size=(150, 48)).astype(np.float32)
    X = C[r.integers(0, 150, 9000)] + 1.1 * r.normal(size=(9000, 48)).astype(np.float32)
    Xd = np.concatenate([X, X[:200]])                                   # exact duplicates
    ge = knn_graph(Xd, k=10, exact=True)
    g = knn_graph_ray(Xd, k=10, n_shards=3, method='exact')
    assert g.method == 'exact-ray' and g.params['n_shards'] == 3
    np.testing.assert_allclose(g.distances, ge.distances, atol=1e-5)    # sharded exact == one-machine exact, row for row
    assert _recall(g.indices, ge.indices) >= 0.999                     # (the same lists, up to the order of float ties)
    ga = knn_graph_ray(Xd, k=10, n_shards=2, method='pca-ivf', pilot=3000, n_eval=300)
    true = _recall(ga.indices, ge.indices)
    assert ga.method == 'pca-ivf-ray' and true >= 0.93 and abs(ga.recall - true) < 0.03
    grp, _ = dedupe_rows(check_embeddings(Xd))
    assert not (grp[ga.indices] == grp[:, None]).any()                 # never itself nor a duplicate
    with pytest.raises(ValueError, match="'method' parameter of knn_graph_ray"): knn_graph_ray(Xd, method='pca-hnsw')


def test_embedding_pipeline_matches_embed_texts(cluster):
    texts = [f'Question {i}: how do I {w} a list in Python?' for i, w in enumerate(['sort', 'reverse', 'copy', 'filter'] * 6)]
    texts += ['The capital of France is Paris.', 'Paris is the capital of France.', 'x' * 300]
    E = embed_texts_ray(texts, replicas=2, num_threads=1, batch_size=4)
    ref = embed_texts(texts, cache_dir=False, progress=False)
    assert E.shape == ref.shape and E.dtype == np.float32
    np.testing.assert_allclose(E, ref, atol=1e-4)                      # same vectors, input order
    with pytest.raises(TypeError, match=r'texts\[1\] is int'): embed_texts_ray(['a', 1])
