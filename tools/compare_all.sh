#!/usr/bin/env bash
# Every shipped comparison of configs/variants/ (docs/results.md, "Comparisons"), one after the other, in the current
# folder (runs under logs/compare/STUDY/); prints each one's wall time. Usage: bash tools/compare_all.sh [SEEDS]
set -euo pipefail
seeds=${1:-3}
mlplab=${MLPLAB:-mlplab}
run() {
    local study=$1; shift
    local start=$SECONDS
    "$mlplab" compare "$@" --seeds "$seeds" --workers 2 --study "$study"
    echo "== $study: $((SECONDS - start)) s wall"
}
run seed004_gradient_descent --config seeds/linreg_batch_gd --variants variants/seed004_gradient_descent
run seed003_dropout --config seeds/noisy_line_dropout --variants variants/seed003_dropout
run seed001_optimizers --config compare/mnist_optimizers --variants variants/seed001_optimizers
run seed001_activations --config compare/mnist_optimizers --variants variants/seed001_activations
run seed001_initialisations --config compare/mnist_optimizers --variants variants/seed001_initialisations
run seed003_deep --config compare/deep_sigmoid --variants variants/seed003_deep_activations
run seed002_step_lr --config seeds/step_lr_mnist --variants variants/seed002_step_lr
# the "three seeds" rows of docs/results.md that a comparison re-derives in minutes
run fast_mnist_98 --config fast/mnist_98 --variants variants/as_is
run fast_fashion_89 --config fast/fashion_89 --variants variants/as_is
