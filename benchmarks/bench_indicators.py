"""Time and peak memory of every dataset indicator on synthetic VLIT data of our own.

    .venv/bin/python benchmarks/bench_indicators.py --size 20000
    .venv/bin/python benchmarks/bench_indicators.py --size 158000 --sklearn-max 0

The data: instructions and responses generated from templates of our own, with a realistic
mix of tasks (descriptions most common, then counting, attributes, location, reasoning, ...),
paraphrased questions and slot fillers, 1-3 turns per sample. Embeddings: WordLlama (static,
no torch) by default; ``--minilm N`` also embeds N responses with MiniLM and compares our
embedder's rate with the bare model's forward pass on the same batches. scikit-learn's
brute-force cosine DBSCAN runs on the same vectors in the same process (up to
``--sklearn-max`` points) so times can be read as ratios on a shared machine.
"""

from __future__ import annotations

import argparse
import random
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vlit.quality.indicators.balance import TaskDistributionIndicator
from vlit.quality.indicators.clustering import cosine_dbscan, knee_eps, kth_neighbour_distances
from vlit.quality.indicators.complexity import ComplexityProxyIndicator, ObjectGranularityIndicator
from vlit.quality.indicators.embeddings import StaticEmbedder, TransformerEmbedder
from vlit.quality.indicators.instruction_diversity import InstructionDiversityIndicator
from vlit.quality.indicators.labels import RuleTaskLabeller
from vlit.quality.indicators.response_diversity import ResponseDiversityIndicator
from vlit.schema import ImageRecord, ObjectAnnotation, Sample, Turn

OBJECTS = [
    "dog",
    "cat",
    "bus",
    "car",
    "person",
    "kite",
    "umbrella",
    "bench",
    "boat",
    "pizza",
    "horse",
    "bicycle",
    "laptop",
    "clock",
    "train",
    "giraffe",
    "cup",
    "chair",
    "tree",
    "traffic light",
    "surfboard",
    "elephant",
    "sandwich",
    "book",
    "vase",
    "sheep",
]
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "brown", "orange", "grey"]
PLACES = ["street", "kitchen", "beach", "park", "field", "living room", "station", "market"]
ACTIONS = ["running", "sitting", "eating", "playing", "walking", "waiting", "riding", "reading"]
TASKS: list[tuple[str, float, list[str], list[str]]] = [
    (
        "description",
        0.30,
        [
            "Describe the image in detail.",
            "What is happening in this {place}?",
            "Can you describe the scene around the {obj}?",
            "Give a detailed account of the picture.",
            "Explain what you see in the {place}.",
        ],
        [
            "The image shows a {colour} {obj} in a busy {place}, with people {action} nearby.",
            "In this {place} a {obj} stands out; around it several people are {action}.",
            "A {colour} {obj} is the focus of the scene, set in a {place} on a bright day.",
        ],
    ),
    (
        "counting",
        0.15,
        [
            "How many {obj}s are there?",
            "Count the {obj}s in the {place}.",
            "What is the number of {obj}s visible?",
        ],
        ["There are {n} {obj}s in the picture.", "I can count {n} {obj}s.", "{n}."],
    ),
    (
        "attribute",
        0.13,
        [
            "What colour is the {obj}?",
            "Which colour does the {obj} have?",
            "What is the {obj} made of?",
        ],
        ["The {obj} is {colour}.", "It is {colour}, with a slightly faded finish."],
    ),
    (
        "location",
        0.11,
        [
            "Where is the {obj} located?",
            "What is next to the {obj}?",
            "Where in the {place} is the {obj}?",
        ],
        ["The {obj} is on the left side of the {place}.", "It sits beside a {colour} {obj2}."],
    ),
    (
        "reasoning",
        0.11,
        [
            "Why might the {obj} be in the {place}?",
            "What could the people be planning?",
            "Why is the person {action} near the {obj}?",
        ],
        [
            "Probably because the {place} is where people gather; the {obj} suggests a routine "
            "activity, and the {colour} details hint at a sunny afternoon.",
            "The {obj} likely belongs to someone {action} nearby, which would explain why it is "
            "left in the {place}.",
        ],
    ),
    (
        "action",
        0.08,
        ["What is the person doing?", "What activity is happening near the {obj}?"],
        ["The person is {action} next to the {obj}.", "Someone is {action} in the {place}."],
    ),
    (
        "yes_no",
        0.07,
        ["Is there a {obj} in the image?", "Are the people {action}?", "Is the {obj} {colour}?"],
        ["Yes, there is a {obj} near the {place} entrance.", "No, there is no {obj} here."],
    ),
    (
        "text",
        0.05,
        ["What does the sign say?", "Can you read the text on the {obj}?"],
        ["The sign reads 'OPEN {n} DAYS'.", "The text on the {obj} says '{colour} {place}'."],
    ),
]


def synthetic_samples(size: int, seed: int) -> tuple[list[Sample], dict[str, ImageRecord]]:
    rng = random.Random(seed)
    weights = [w for _, w, _, _ in TASKS]
    samples: list[Sample] = []
    records: dict[str, ImageRecord] = {}
    for index in range(size):
        image_id = str(index % max(size // 3, 1))
        if image_id not in records:
            records[image_id] = ImageRecord(
                image_id=image_id,
                file_name=f"{image_id}.jpg",
                objects=[
                    ObjectAnnotation(category=rng.choice(OBJECTS)) for _ in range(rng.randint(1, 6))
                ],
            )
        turns: list[Turn] = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            _, _, questions, answers = rng.choices(TASKS, weights=weights)[0]
            slots = {
                "obj": rng.choice(OBJECTS),
                "obj2": rng.choice(OBJECTS),
                "colour": rng.choice(COLOURS),
                "place": rng.choice(PLACES),
                "action": rng.choice(ACTIONS),
                "n": rng.randint(1, 9),
            }
            question = rng.choice(questions).format(**slots)
            if rng.random() < 0.3:
                question = rng.choice(["Please tell me: ", "Look closely. ", ""]) + question
            turns += [
                Turn("user", question),
                Turn("assistant", rng.choice(answers).format(**slots)),
            ]
        samples.append(Sample(f"s{index}", image_id=image_id, turns=turns))
    return samples, records


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure(
    name: str, work: Callable[[], Any], table: list[tuple[str, float, float, str]], note: str = ""
) -> Any:
    """Run ``work``; record wall time and peak resident memory above the level before it
    (sampled every 5 ms by a thread, so Python code runs at full speed)."""
    baseline = _rss_mib()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    value = work()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mib())
    table.append((name, seconds, peak[0] - baseline, note))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-samples", type=int, default=5)
    parser.add_argument(
        "--sklearn-max",
        type=int,
        default=20000,
        help="run sklearn brute-force DBSCAN only up to this many points",
    )
    parser.add_argument(
        "--minilm",
        type=int,
        default=0,
        help="also embed this many responses with MiniLM (rate vs bare model)",
    )
    parser.add_argument("--parse-limit", type=int, default=2000)
    args = parser.parse_args()

    table: list[tuple[str, float, float, str]] = []
    samples, records = measure(
        "generate synthetic data", lambda: synthetic_samples(args.size, args.seed), table
    )
    measure("rule labeller", lambda: RuleTaskLabeller()(samples), table)

    def streaming(indicator: Any) -> Any:
        for start in range(0, len(samples), 4096):
            indicator.update(samples[start : start + 4096])
        return indicator.result()

    tasks = measure("tasks + balance", lambda: streaming(TaskDistributionIndicator()), table)
    diversity = measure(
        "Ego-Splitting, every task", lambda: streaming(InstructionDiversityIndicator()), table
    )
    measure(
        "O/G from annotations",
        lambda: streaming(ObjectGranularityIndicator(records=records)),
        table,
    )
    measure(
        f"O/G from spaCy parse ({args.parse_limit} sampled)",
        lambda: streaming(ObjectGranularityIndicator(records={}, parse_limit=args.parse_limit)),
        table,
    )
    measure("complexity proxy", lambda: streaming(ComplexityProxyIndicator()), table)

    texts = [" ".join(s.assistant_turns()) for s in samples]
    embedder = StaticEmbedder()
    vectors = measure(
        "embed responses (WordLlama)", lambda: embedder.embed(texts), table, f"{len(texts)} texts"
    )
    indicator = ResponseDiversityIndicator(embedder=embedder, min_samples=args.min_samples)
    indicator.update(samples)
    response = measure(
        "R: 5,000 distinct responses, eps sweep, DBSCAN",
        indicator.result,
        table,
        "embeds its subsample again",
    )
    eps = response["eps"]
    if len(vectors) <= args.sklearn_max:
        ours = measure(
            "DBSCAN ours (tiled exact), all responses",
            lambda: cosine_dbscan(vectors, eps=eps, min_samples=args.min_samples),
            table,
            f"eps={eps:.3f}",
        )
        ours_time = table[-1][1]
        from sklearn.cluster import DBSCAN

        reference = measure(
            "DBSCAN sklearn brute, float64 (baseline)",
            lambda: (
                DBSCAN(eps=eps, min_samples=args.min_samples, metric="cosine", algorithm="brute")
                .fit(vectors.astype(np.float64))
                .labels_
            ),
            table,
        )
        same = np.array_equal(reference < 0, ours.labels < 0) and len(
            set(zip(reference.tolist(), ours.labels.tolist(), strict=True))
        ) == reference.max() + 1 + int((reference < 0).any())
        table[-1] = (
            *table[-1][:3],
            f"same clusters: {same}; ours/sklearn time {ours_time / table[-1][1]:.2f}",
        )

    if args.minilm:
        import torch

        model = TransformerEmbedder(model="minilm")
        model.setup()
        subset = texts[: args.minilm]
        minilm_vectors = measure(
            "MiniLM embed() (ours, end to end)",
            lambda: model.embed(subset),
            table,
            f"{len(subset)} texts",
        )
        ours_rate = len(subset) / table[-1][1]
        ids = model.tokenize(subset)
        batches = [[ids[i] for i in batch] for batch in model.length_sorted_batches(ids)]

        def bare() -> None:
            assert model._loaded is not None
            tokenizer, network = model._loaded
            padded = [tokenizer.pad({"input_ids": b}, return_tensors="pt") for b in batches]
            start = time.perf_counter()
            with torch.inference_mode():
                for batch in padded:
                    network(**batch)
            table.append(("  bare forward only", time.perf_counter() - start, 0.0, ""))

        bare()
        bare_rate = len(subset) / table[-1][1]
        table[-1] = (
            *table[-1][:3],
            f"ours at {100 * ours_rate / bare_rate:.0f}% of bare "
            f"({ours_rate:.0f}/s vs {bare_rate:.0f}/s)",
        )

    if args.minilm:
        # the same responses clustered with either embedder, each with its own knee eps
        print(
            f"\ncluster counts on the same {len(subset)} responses (min_samples {args.min_samples})"
        )
        print(
            f"{'embedder':12s} {'eps':>6s} {'clusters':>9s} {'noise':>7s}  count at eps x0.8/x1.2"
        )
        for name, matrix in (("WordLlama", vectors[: len(subset)]), ("MiniLM", minilm_vectors)):
            knee = knee_eps(kth_neighbour_distances(matrix, k=args.min_samples))
            counts = [
                cosine_dbscan(matrix, eps=knee * factor, min_samples=args.min_samples)
                for factor in (1.0, 0.8, 1.2)
            ]
            print(
                f"{name:12s} {knee:6.3f} {counts[0].cluster_count:9d} {counts[0].noise_count:7d}"
                f"  {counts[1].cluster_count}/{counts[2].cluster_count}"
            )
    print(
        f"\nsize={args.size}  tasks T={tasks['task_diversity']}  "
        f"I(mean clusters)={diversity['mean_clusters']:.1f}  "
        f"R={response['log_clusters']} ({response['clusters']} clusters, eps {eps:.3f})"
    )
    print(f"{'step':48s} {'seconds':>9s} {'+RSS MiB':>9s}  note")
    for name, seconds, peak, note in table:
        print(f"{name:48s} {seconds:9.2f} {peak:9.1f}  {note}")
    # the bound covers everything but data generation, the embedding and the baseline
    ours = [row for row in table if not row[0].startswith(("generate", "embed", "DBSCAN"))]
    ours = [row for row in ours if not row[0].startswith(("MiniLM", "  bare"))]
    print(
        f"{'all indicators except the embedding (sum)':48s} "
        f"{sum(row[1] for row in ours):9.2f} {max(row[2] for row in ours):9.1f}  (max step)"
    )
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS {maxrss:.0f} MiB")


if __name__ == "__main__":
    main()
