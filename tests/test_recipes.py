"""Each pre-training bundle's named recipes (common.recipes): ``paper`` resolves to what the paper states,
``official`` to the official code's values (or, without official code, the named alternative), ``cpu_demo`` on a
machine without CUDA; an unknown name is an error.

The expected values are written out here from their sources, not read from the configs: the paper's full text in
``../shared/papers/`` and the official repository's defaults (the file named with each value)."""

import pytest
from monai.bundle import ConfigParser

from common.recipes import recipe_settings
from conftest import REPO_ROOT

# HySparK, Sec. 3.2: "AdamW optimizer, an initial learning rate of 1e-4, and a cosine-annealing learning rate
# scheduler [...] a batch-size of 8 on a single GPU and 100 epochs"; Sec. 3.1: "We crop sub-volumes of 96 x 96 x 96
# voxels"; Sec. 3.4 (Table 4): "a 75% mask ratio achieves the best performance".
# Official code (FengheTan9/HySparK): utils/arg_util.py bs 1, base_lr 1e-4, wd 0.04, wde 0.2, ep 100, wp_ep 40,
# clip 5, mask 0.75, input_size 96; utils/med_dataset.py num_samples 4 crops per volume; utils/lr_control.py warm-up
# from 0.005 x peak, cosine to 0.001 x peak.
EXPECTED = {
    "hyspark_pretrain": {
        "paper": {"global_batch_size": 8, "learning_rate": 1e-4, "max_epochs": 100, "mask_ratio": 0.75,
                  "roi_size": [96, 96, 96]},
        "official": {"global_batch_size": 4, "learning_rate": 1e-4, "max_epochs": 100, "warmup_epochs": 40,
                     "mask_ratio": 0.75, "roi_size": [96, 96, 96], "num_samples": 4, "weight_decay": 0.04,
                     "final_weight_decay": 0.2, "grad_clip_norm": 5.0, "min_learning_rate": 1e-7},
    },
    # GL-MAE, Experiments, "Pre-training setting": "1600 epochs [...] an initial learning rate of 1e-2, employing
    # AdamW [...] a batch size of 256"; global views "resized into [160, 160, 160]", local "[96, 96, 96]"; "Analysis
    # of mask ratio": "a mask ratio of 0.6 would be best"; Eq. 7: one softmax temperature t for both sides, no
    # centring (t is not stated: DINO's student temperature 0.1). No official pre-training code: the alternative,
    # mae_dino, is MAE's learning rate (1.5e-4) with DINO's temperatures and centre (0.1 / 0.04, momentum 0.9).
    "glmae_pretrain": {
        "paper": {"global_batch_size": 256, "learning_rate": 1e-2, "max_epochs": 1600, "mask_ratio": 0.6,
                  "global_size": 160, "local_size": 96, "student_temperature": 0.1, "teacher_temperature": 0.1,
                  "center_momentum": 1.0},
        "mae_dino": {"global_batch_size": 256, "learning_rate": 1.5e-4, "max_epochs": 1600, "mask_ratio": 0.6,
                     "student_temperature": 0.1, "teacher_temperature": 0.04, "center_momentum": 0.9},
    },
    # MiM, Table II "Pre-training settings": "Steps 45K", "Optimizer AdamW", "Learning rate (LR) 1e-4", "Warmup step
    # 100", "Regularization weight 1e-2", "Batch size 256", "MiM Level-1 384, 384, 192", "MiM mask ratio 0.6",
    # (one ratio, every level), "MiM sampling times on next level gamma 4"; Eq. 10: alpha 0.1; Table XII:
    # "Simultaneously" (equal level weights) the best learning process. Silent: lr floor, betas from the official code.
    # Official code (JiaxinZhuang/MiM): Pretrain/nscripts_gpu6/MiM/pretrain.sh batch_size 1 x accum_iter 64 x 2 GPUs =
    # 128 crops (utils/data_utils.py get_loader_mmsmae: one 192^3 crop per volume), blr 1e-4 scaled by an
    # eff_batch_size of 512 (main_pretrain.py 89-90: counts sw_batch_size 4) = 2e-4, weight_decay 0.05, AdamW betas
    # (0.9, 0.95) (main_pretrain.py 104), min_lr 0 (utils/default_arguments.py 41), no clipping (engine_pretrain.py 90),
    # attn_loss_name byol; 800 epochs / 40 warm-up epochs on its 1k set (746 volumes, 5 optimizer steps per epoch) =
    # 4,000 / 200 optimizer steps; mask ratios per level 0.5 / 0.6 / 0.5: utils/default_arguments.py 130-135
    # mask_ratio_up / mask_ratio_mid / mask_ratio_down, read by models_convmae3d_v4.py 372 / 380 / 388 for level 1 (the
    # 192^3 crop) / level 2 (its 96^3 octants) / level 3 (the 16^3 tokens); the script's --mask_ratio 0.6 is not read
    # by this model; --mode concurrent (utils/default_arguments.py 160): equal level weights.
    "mim_pretrain": {
        "paper": {"global_batch_size": 256, "learning_rate": 1e-4, "max_steps": 45000, "warmup_steps": 100,
                  "weight_decay": 0.01, "min_learning_rate": 0.0, "mask_ratio": 0.6, "children_per_parent": 4,
                  "contrast_weight": 0.1, "level_schedule": "simultaneous", "roi_size": [384, 384, 192]},
        "official": {"global_batch_size": 128, "learning_rate": 2e-4, "max_steps": 4000, "warmup_steps": 200,
                     "weight_decay": 0.05, "betas": [0.9, 0.95], "min_learning_rate": 0.0, "grad_clip_norm": None,
                     "num_samples": 1, "mask_ratio": [0.5, 0.6, 0.5], "children_per_parent": 4,
                     "contrast_loss": "byol", "level_schedule": "simultaneous", "roi_size": [192, 192, 192]},
    },
    # SparK-3D, HySparK's baseline (no SparK-3D paper, no official 3D SparK code). HySparK, Sec. 3.2: "AdamW
    # optimizer, an initial learning rate of 1e-4, and a cosine-annealing learning rate scheduler [...] a batch-size of
    # 8 on a single GPU and 100 epochs" (stated for its pre-training, no method named; "MAE, SimMIM, and SparK methods
    # are obtained by using official codes and extending them to 3D"); Sec. 3.1: "We crop sub-volumes of 96 x 96 x 96
    # voxels". Silent values from the HySparK code (FengheTan9/HySparK): utils/arg_util.py wd 0.04, wde 0.2, wp_ep 40,
    # clip 5, mask 0.75; utils/med_dataset.py 4 crops per volume; utils/lr_control.py cosine to 0.001 x peak.
    # official: SparK's official 2D code (keyu-tian/SparK) where it carries over to 3D: pretrain/utils/arg_util.py
    # mask 0.6 (its bs 4096, ep 1600 and LAMB at base_lr 2e-4 x bs / 256 are ImageNet's: as paper).
    "spark3d_pretrain": {
        "paper": {"global_batch_size": 8, "learning_rate": 1e-4, "max_epochs": 100, "warmup_epochs": 40,
                  "mask_ratio": 0.75, "roi_size": [96, 96, 96], "num_samples": 4, "weight_decay": 0.04,
                  "final_weight_decay": 0.2, "grad_clip_norm": 5.0, "min_learning_rate": 1e-7},
        "official": {"global_batch_size": 8, "learning_rate": 1e-4, "max_epochs": 100, "warmup_epochs": 40,
                     "mask_ratio": 0.6, "weight_decay": 0.04, "final_weight_decay": 0.2, "grad_clip_norm": 5.0,
                     "min_learning_rate": 1e-7},
    },
    # MAE3D, GL-MAE's baseline (the MAE3D paper is not in ../shared/papers/). GL-MAE, Experiments, "Pre-training
    # setting": "1600 epochs [...] an initial learning rate of 1e-2, employing AdamW [...] a batch size of 256" (no
    # method named); "Analysis of mask ratio": "a mask ratio of 0.6 would be best [...] a very high mask ratio, like
    # 0.7, is not ideal [...] consistent with the findings on MAE3D in our implementation". Silent values from MAE's
    # code (facebookresearch/mae): main_pretrain.py betas (0.9, 0.95), warmup_epochs 40, min_lr 0, weight_decay 0.05,
    # no clipping. official: MAE3D's code (chenz53/MIM-Med3D), code/configs/ssl/btcv/vitmae_base_m0.75.yaml: AdamW lr
    # 3e-4, weight_decay 0.05, warmup_epochs 300, max_epochs 3000, eta_min 1e-4, masking_ratio 0.75, batch_size 4
    # per GPU; code/data/btcv_dataset.py 4 crops of 96^3 per volume (16 crops per GPU).
    "mae3d_pretrain": {
        "paper": {"global_batch_size": 256, "learning_rate": 1e-2, "max_epochs": 1600, "warmup_epochs": 40,
                  "min_learning_rate": 0.0, "weight_decay": 0.05, "betas": [0.9, 0.95], "grad_clip_norm": None,
                  "mask_ratio": 0.6, "num_samples": 4},
        "official": {"global_batch_size": 16, "learning_rate": 3e-4, "max_epochs": 3000, "warmup_epochs": 300,
                     "min_learning_rate": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.999], "grad_clip_norm": None,
                     "mask_ratio": 0.75, "num_samples": 4},
    },
    # Wolf et al., Sci. Rep. 2023, Supplementary Table 7 ("Hyperparameter SparK"): "Patch Size 32 x 32", "Mask Ratio
    # 60%", "Batch Size 32", "Optimizer LAMB", "Learning rate Cosine Annealing (peak: 25e-6)" (= 2e-4 x 32 / 256);
    # "Downstream Evaluation": "All pre-trainings ran for 900 epochs". Silent values from the official code: the study's
    # Pre-Training/Masked_Autoencoder (SparK's official code, run with --bs=32, its README), i.e. keyu-tian/SparK
    # pretrain/utils/arg_util.py base_lr 2e-4, input_size 224, wd 0.04, wde 0.2, wp_ep 40, clip 5, mask 0.6, ep 1600;
    # utils/lr_control.py warm-up from 0.005 x peak, cosine to 0.001 x peak; utils/imagenet.py crop scale (0.67, 1).
    "spark2d_pretrain": {
        "paper": {"global_batch_size": 32, "learning_rate": 2.5e-5, "max_epochs": 900, "warmup_epochs": 40,
                  "mask_ratio": 0.6, "image_size": 224, "crop_scale": [0.67, 1.0], "weight_decay": 0.04,
                  "final_weight_decay": 0.2, "grad_clip_norm": 5.0, "min_learning_rate": 2.5e-8,
                  "augmentations": ["crop", "flip"], "normalisation": "dataset"},
        "official": {"global_batch_size": 32, "learning_rate": 2.5e-5, "max_epochs": 1600, "warmup_epochs": 40,
                     "mask_ratio": 0.6, "image_size": 224, "crop_scale": [0.67, 1.0],
                     "augmentations": ["crop", "flip"], "normalisation": "imagenet"},
    },
    # Wolf et al., Supplementary Table 4 ("Hyperparameter MoCo"): "Number of Crops 2", "Size of Crops 224 x 224",
    # "Optimizer SGD", "Batch Size 64", "Learning Rate 1e-4", "Momentum 0.9"; "All pre-trainings ran for 900 epochs".
    # Silent values from the official code (Wolfda95/SSL-MedicalImagining-CL-MAE, Pre-Training/Contrastive_Learning/
    # pl_bolts/models/self_supervised/moco/moco2_module.py defaults): weight_decay 1e-4, softmax_temperature 0.07,
    # num_negatives 65536, encoder_momentum 0.999; moco_data_module.py RandomResizedCrop(224, scale=(0.2, 1.0)).
    # official: that code's learning_rate 0.015 at the study's batch 64 (its CLI batch default is 128).
    "moco2d_pretrain": {
        "paper": {"global_batch_size": 64, "learning_rate": 1e-4, "max_epochs": 900, "sgd_momentum": 0.9,
                  "weight_decay": 1e-4, "temperature": 0.07, "queue_size": 65536, "base_momentum": 0.999,
                  "image_size": 224, "crop_scale": [0.2, 1.0], "augmentations": ["crop", "flip", "blur"],
                  "normalisation": "dataset"},
        "official": {"global_batch_size": 64, "learning_rate": 0.015, "max_epochs": 900, "sgd_momentum": 0.9,
                     "weight_decay": 1e-4, "temperature": 0.07, "queue_size": 65536,
                     "augmentations": ["rotate", "crop", "jitter", "blur", "flip", "vertical_flip", "noise"],
                     "normalisation": "dataset"},
    },
    # Wolf et al., Methods, "Self-Supervised Pre-Training": "Each of the four pre-trainings runs 900 epochs";
    # Supplementary Table 6 (BYOL): "Number of Crops 2", "Size of Crops 224 x 224", "Optimizer LARS", "Batch Size 64",
    # "Learning Rate 1e-3", "Weight Decay 1.5e-6". Silent values from the official code (Wolfda95/SSL-MedicalImagining-
    # CL-MAE, Lightning Bolts' BYOL): byol/logo_data_module.py RandomResizedCrop(224, scale=(0.2, 1.0)); byol_module.py
    # --warmup_epochs 10, LinearWarmupCosineAnnealingLR to eta_min 0; callbacks/byol_updates.py tau 0.996 -> 1.
    # official: byol_module.py torch.optim.Adam, --learning_rate 1e-3, --weight_decay 1.5e-6, --batch_size 64, cosine
    # over max_epochs=100 (hard-coded).
    "byol2d_pretrain": {
        "paper": {"global_batch_size": 64, "learning_rate": 1e-3, "max_epochs": 900, "warmup_epochs": 10,
                  "min_learning_rate": 0.0, "optimizer_name": "LARS", "weight_decay": 1.5e-6, "image_size": 224,
                  "crop_scale": [0.2, 1.0], "base_momentum": 0.996, "final_momentum": 1.0,
                  "augmentations": ["crop", "flip", "blur"], "normalisation": "dataset"},
        "official": {"global_batch_size": 64, "learning_rate": 1e-3, "max_epochs": 100, "warmup_epochs": 10,
                     "min_learning_rate": 0.0, "optimizer_name": "Adam", "weight_decay": 1.5e-6, "image_size": 224,
                     "crop_scale": [0.2, 1.0], "base_momentum": 0.996, "final_momentum": 1.0,
                     "augmentations": ["rotate", "crop", "jitter", "blur", "flip", "vertical_flip", "noise"],
                     "normalisation": "dataset"},
    },
    # Wolf et al., Methods: 900 epochs; Supplementary Table 5 (SwAV): "Number of Crops 2; 6", "Size of Crops 224 x 224 ;
    # 96 x 96", "Min Scale Crops 0.90; 0.10", "Max Scale Crops 1.0; 0.33", "Optimizer Lars", "Batch Size 128", "Learning
    # Rate 0.15", "Weight Decay 1e-6", "Sinkhorn Iterations 3", "Number Cluster Prototypes 500", "Freeze Cluster
    # Prototypes 313" (iterations, as SwAV's freeze_prototypes_niters). Silent values from the official code
    # (swav/swav_module_lidc.py): --warmup_epochs 10, linear_warmup_decay from 0 to 0 (--start_lr / --final_lr unused),
    # --temperature 0.1, --epsilon 0.05. official: the same with --learning_rate 4.8, --max_epochs 800,
    # --freeze_prototypes_epochs 1.
    "swav2d_pretrain": {
        "paper": {"global_batch_size": 128, "learning_rate": 0.15, "max_epochs": 900, "warmup_epochs": 10,
                  "warmup_start_learning_rate": 0.0, "min_learning_rate": 0.0, "weight_decay": 1e-6,
                  "global_views": 2, "global_size": 224, "global_scale": [0.9, 1.0], "local_views": 6,
                  "local_size": 96, "local_scale": [0.1, 0.33], "sinkhorn_iterations": 3, "num_prototypes": 500,
                  "freeze_prototypes_iterations": 313, "temperature": 0.1, "epsilon": 0.05,
                  "augmentations": ["blur", "crop"], "normalisation": "dataset"},
        "official": {"global_batch_size": 128, "learning_rate": 4.8, "max_epochs": 800, "warmup_epochs": 10,
                     "warmup_start_learning_rate": 0.0, "min_learning_rate": 0.0, "weight_decay": 1e-6,
                     "global_scale": [0.9, 1.0], "local_scale": [0.1, 0.33], "sinkhorn_iterations": 3,
                     "num_prototypes": 500, "temperature": 0.1, "epsilon": 0.05,
                     "augmentations": ["crop", "jitter", "blur"], "normalisation": "dataset"},
    },
}


def resolved(bundle: str, output_dir, **settings) -> ConfigParser:
    """``train.json`` of ``bundle`` with ``settings``; its outputs (a 2D bundle caches its data set's intensity
    statistics there when ``hyper_parameters`` resolves) go to ``output_dir``."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update({"output_dir": str(output_dir), **settings})
    return parser


@pytest.mark.parametrize("bundle, recipe", [(bundle, recipe) for bundle in EXPECTED for recipe in EXPECTED[bundle]])
def test_the_recipe_resolves_to_its_sources_values(bundle, recipe, monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    settings = {"cpu_demo_scale": False} if recipe == "paper" else {"cpu_demo_scale": False, "recipe": recipe}
    parser = resolved(bundle, tmp_path, **settings)
    assert parser.get_parsed_content("hyper_parameters")["recipe"] == recipe  # logged to MLflow
    for key, value in EXPECTED[bundle][recipe].items():
        assert parser.get_parsed_content(key) == pytest.approx(value), key


@pytest.mark.parametrize("bundle", sorted(EXPECTED))
def test_the_cpu_demo_is_the_default_without_cuda_and_an_unknown_recipe_is_an_error(bundle, tmp_path):
    assert resolved(bundle, tmp_path, cpu_demo_scale=True).get_parsed_content("recipe") == "cpu_demo"
    with pytest.raises(RuntimeError) as raised:
        resolved(bundle, tmp_path, recipe="papr").get_parsed_content("learning_rate")
    assert "unknown recipe 'papr'" in str(raised.value.__cause__) and "'paper'" in str(raised.value.__cause__)


def test_recipes_must_set_the_same_keys():
    with pytest.raises(ValueError, match=r"'official': \['warmup_epochs'\]"):
        recipe_settings({"paper": {"lr": 1, "warmup_epochs": 2}, "official": {"lr": 1}}, "paper")
