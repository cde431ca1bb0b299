"""Full filtered evaluation of a KG test split against the bare matrix products it is built on.

Both directions (reciprocal queries), realistic ranks, filtering through the CSR index, counting
instead of sorting: this times `kg.evaluate.evaluate` and, interleaved with it, only the score
matrices q @ E^T of the same query batches. The ratio is the overhead of the protocol.
Usage: python benchmarks/kg/kg_eval_speed.py --data-dir ../shared/data [--dataset fb15k237] [--run RUN]
"""

import argparse
import statistics
import time

import torch

from dni_pipeline.core.run_folder import RunFolder
from kg.datasets import load_kg, with_reciprocals
from kg.evaluate import answer_index, evaluate
from kg.job import load_trained
from kg.models import build_model


def bare_products(model, queries: torch.Tensor, batch_size: int) -> None:
    with torch.no_grad():
        for start in range(0, len(queries), batch_size):
            h, r, _ = queries[start:start + batch_size].T
            model.score_tails(h, r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding kg/DATASET/")
    p.add_argument("--dataset", default="fb15k237", help="dataset (default fb15k237)")
    p.add_argument("--run", help="a `kg train` run folder whose best model is evaluated (default: ComplEx d=200, untrained)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="queries per score matrix (default 256)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        _, data, model = load_trained(RunFolder.existing(args.run))
    else:
        data = load_kg(args.dataset, args.data_dir)
        model = build_model("complex", data.num_entities, data.num_relations, dim=200, init_scale=0.1, gamma=0,
                            p_norm=1, seed=0)
    index = answer_index(data)
    queries = torch.from_numpy(with_reciprocals(data.splits["test"], data.num_relations))
    width = model.entity.weight.shape[1]
    gflop = 2 * len(queries) * data.num_entities * width / 1e9
    full, bare = [], []
    for _ in range(args.reps):
        start = time.perf_counter()
        metrics = evaluate(model, data, "test", index, batch_size=args.batch_size)
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_products(model, queries, args.batch_size)
        bare.append(time.perf_counter() - start)
    f, b = statistics.median(full), statistics.median(bare)
    print(f"{data.name} test: {len(queries)} queries (both directions) x {data.num_entities} entities x width {width} "
          f"= {gflop:.0f} GFLOP; {args.threads} threads; MRR {metrics['mrr']:.4f}")
    print("| what | median s | all reps |\n|---|---|---|")
    print(f"| full filtered evaluation | {f:.2f} | {' '.join(f'{x:.2f}' for x in full)} |")
    print(f"| bare matrix products | {b:.2f} | {' '.join(f'{x:.2f}' for x in bare)} |")
    print(f"ratio full / bare: {f / b:.2f}x")


if __name__ == "__main__":
    main()
