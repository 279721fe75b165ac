"""Peak memory of one GPTQ solve (torch.ops.lwq.gptq_quantize) above what the caller holds (its Hessian and weight):
RSS sampled every 20 ms from another thread while the call runs. Compare two builds on the same shape:

    /usr/bin/python3 bench/bench_gptq_memory.py --build build --in-features 8192 --act-order
    /usr/bin/python3 bench/bench_gptq_memory.py --build OTHER_BUILD --in-features 8192 --act-order
"""
import argparse
import threading
import time

import torch


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="build directory with lib/liblwq_ops.so and lib/liblwq.so")
    parser.add_argument("--in-features", type=int, default=8192)
    parser.add_argument("--out-features", type=int, default=1024)
    parser.add_argument("--act-order", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.ops.load_library(f"{args.build}/lib/liblwq_ops.so")
    torch.ops.load_library(f"{args.build}/lib/liblwq.so")
    torch.set_num_threads(args.threads)
    n = args.in_features
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 256, generator=g)
    h = a @ a.t() / 256 + torch.eye(n)  # positive definite, a low-rank correlation like calibration inputs
    del a
    w = torch.randn(args.out_features, n, generator=g) * 0.02
    base, peak, done = rss_mib(), [0.0], threading.Event()

    def solve():
        torch.ops.lwq.gptq_quantize(w, h, "int4", 128, True, 0.01, 128, args.act_order, False)
        done.set()

    start = time.time()
    worker = threading.Thread(target=solve)
    worker.start()
    while not done.is_set():
        peak[0] = max(peak[0], rss_mib() - base)
        time.sleep(0.02)
    worker.join()
    h_mib = h.numel() * h.element_size() / 2 ** 20
    print(f"gptq int4 g128 [{args.out_features}, {n}]{' act_order' if args.act_order else ''}, {args.threads} threads: "
          f"H {h_mib:.0f} MiB, peak above the caller's tensors {peak[0]:.0f} MiB ({peak[0] / h_mib:.1f} H), "
          f"{time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
