#!/usr/bin/env python
"""A stage-1 network fine-tuned from block4 (a GPU run) as the in-lab stage 1, end to end.

    python docs/experiments/block4_inlab.py HEAD DEEPER   # paths below: ../shared as /work/shared

HEAD / DEEPER: the two files ``tools/torch_recipe.py train --stages 1 --sizes 160
--first-trained 4`` writes (``s1-160.npz``: block5 + dense; ``s1-160-deeper.npz``:
block4). The bundle cannot hold such a network yet: it shares VGG16 through block 4
with every stage. Here it runs as a Keras model of its own: blocks 1-3 with ImageNet's
weights, then its block4, block5 and head, on the bundled model's canonical frames
(bfloat16). Its SVM is fit as the bundle's are (RBF, balanced, C by 3-fold grid
search, sigmoid calibration) on its Dense(1024) embeddings of train + val, at most
1,500 cells per class, but without augmented views. It then answers the cells that the
bundled model's in-lab gate passes, with a mix of its SVM's and its head's
probabilities. Every other cell keeps the bundled model's answer. Stage-1 accuracy on
PBC val (in the SVM's training data, as for the bundled in-lab stage) and test.

Measured with the network of ``docs/gpu-runs/2026-11-27-call4.log`` (seed 0, 22 epochs
in 1.7 minutes, best validation loss 0.0578 against 0.0716 for the bundled in-lab
network's block5 run). It took about 4 minutes on the 2-core CPU, 84 images/s through the whole network:

| | val | test |
|---|---|---|
| bundled model, stage 1 as routed | 0.9825 | 0.9781 |
| block4 in-lab stage: SVM alone / SVM and head 0.5 each / head alone | 0.9895 / 0.9889 / 0.9883 | 0.9781 / **0.9801** / 0.9813 |
| on every cell (no gate), block4 network: SVM / mix / head | 0.9912 / 0.9901 / 0.9877 | 0.9792 / 0.9830 / 0.9836 |
| on every cell, the bundled in-lab stage | 0.9825 | 0.9804 |

The in-lab share is 0.950 on val and 0.947 on test. Its SVM: C = 10, 3-fold balanced
accuracy 0.9864.

- **Block4 buys 0.2-0.3 point on the test split as the in-lab stage** (0.9801 at the
  bundled mix, 0.9813 with the head alone). That is short of the 0.985 goal.
- **The SVM fits val but does not carry to test.** Val is in its training data, and on
  test it answers no better than the bundled stage.
- **The gate costs here.** The 5 % of cells it hands to the main stage 1 are answered
  better by the block4 network (test 0.9836 on every cell, head alone).
- **One network, one seed.** Its training stopped at 22 epochs; session 11's 33-epoch
  run reached a validation loss of 0.0539.
"""
import sys, time, numpy as np
import hiercell
from hiercell.backbone import (INFERENCE_POLICIES, build_head, build_vgg16, precision_policy,
                               resolve_weights, vgg_input, _keras)
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.io import try_load_image
from hiercell.hierarchy import MAIN_CLASSES
from hiercell.stage import StageClassifier

t0 = time.time()
keras = _keras()
base = hiercell.load(None, precision="auto")
H = base.hierarchy
if len(sys.argv) != 3:
    sys.exit("usage: block4_inlab.py HEAD DEEPER (see the docstring)")
main = np.load(sys.argv[1]); deeper = np.load(sys.argv[2])
classes = [str(c) for c in main["classes"]]
w_main = [main[k].astype(np.float32) for k in sorted(main.files) if k[0] == "w"]
w_deep = [deeper[k].astype(np.float32) for k in sorted(deeper.files) if k[0] == "w"]
with precision_policy(INFERENCE_POLICIES["bfloat16"]):
    vgg = build_vgg16(160, resolve_weights(None))
    x = vgg.get_layer("block3_pool").output
    for i in range(3):
        conv = keras.layers.Conv2D(512, 3, padding="same", activation="relu", name=f"b4_{i}")
        x = conv(x)
        conv.set_weights([w_deep[2 * i], w_deep[2 * i + 1]])
    x = keras.layers.MaxPooling2D(2)(x)
    head = build_head(len(classes), (10, 10, 512))
    head.set_weights(w_main)
    emb_layer = keras.Model(head.input, [head.get_layer("embedding").output, head.output])
    e, p = emb_layer(x)
    net = keras.Model(vgg.input, [e, p])
print(f"network built ({time.time() - t0:.0f} s)", flush=True)

def run(samples, bs=64):
    E, P = [], []
    for k in range(0, len(samples), bs):
        imgs = [try_load_image(s.path)[0] for s in samples[k:k + bs]]
        batch = base.prepare(imgs)
        e, p = net.predict_on_batch(vgg_input(batch))
        E.append(np.asarray(e, np.float32)); P.append(np.asarray(p, np.float32))
        if k % 1280 == 0:
            print(f"  {k}/{len(samples)} ({time.time() - t0:.0f} s)", flush=True)
    return np.concatenate(E), np.concatenate(P)

data = read_dataset("/work/shared/data/pbc")
rng = np.random.default_rng(0)
fit = [s for s in data if s.split in ("train", "val") and s.main]
by = {}
for i, s in enumerate(fit):
    by.setdefault(s.main, []).append(i)
keep = sorted(j for c, idx in by.items() for j in rng.permutation(idx)[:1500])
fit = [fit[j] for j in keep]
E_fit, _ = run(fit)
stage = StageClassifier()
stage.fit_svm_embeddings(E_fit, np.array([s.main for s in fit]))
print("SVM", stage.svm_best_params_, round(stage.svm_cv_score_, 4), f"({time.time() - t0:.0f} s)", flush=True)
svm_classes = [str(c) for c in stage.svm_.classes_]
for split in ("val", "test"):
    S = [s for s in data if s.split == split and s.main]
    E, P = run(S)
    ps = stage.svm_.predict_proba(E)
    order = [classes.index(c) for c in svm_classes]
    mix = 0.5 * ps + 0.5 * P[:, order]
    y = np.array([s.main for s in S])
    res = model_features(base, [s.path for s in S], cache_dir="runs/cache")
    X = res.features
    inl = H.inlab_rows(X)
    routed_now = np.array(MAIN_CLASSES)[H._stage_probas(X)[0].argmax(1)]
    new = routed_now.copy()
    new[inl] = np.array(svm_classes)[mix[inl].argmax(1)]
    cur_inlab = np.array([str(c) for c in H.inlab.classes_])[H.inlab.predict_outputs(X).proba.argmax(1)]
    print(f"{split}: routed stage 1 now {np.mean(routed_now == y):.4f} -> with the block4 in-lab "
          f"stage {np.mean(new == y):.4f} (in-lab share {inl.mean():.3f}); on all cells: block4 "
          f"SVM {np.mean(np.array(svm_classes)[ps.argmax(1)] == y):.4f}, head "
          f"{np.mean(np.array(classes)[P.argmax(1)] == y):.4f}, mean {np.mean(np.array(svm_classes)[mix.argmax(1)] == y):.4f}; "
          f"current in-lab stage {np.mean(cur_inlab == y):.4f}", flush=True)
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        m = (1 - w) * ps + w * P[:, order]
        v = routed_now.copy(); v[inl] = np.array(svm_classes)[m[inl].argmax(1)]
        print(f"   {split} head weight {w}: routed {np.mean(v == y):.4f}", flush=True)
