"""The fine-tuning recipes of ``btcv_segmentation`` (common.recipes): each resolves to its sources' values; HySparK's
Dice + binary cross-entropy loss; the warm-up cosine schedule and gradient accumulation of MONAI's SupervisedTrainer.

The expected values are written out here from their sources, not read from the config."""

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from common.engine import lr_schedule
from common.engine.schedules import warmup_cosine
from common.losses import DiceBCELoss, segmentation_loss
from common.transforms.segmentation import TUTORIAL_AUGMENTATION_PROBS
from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundles" / "btcv_segmentation" / "configs"

# Swin UNETR's and UNETR's official BTCV code (Project-MONAI/research-contributions, SwinUNETR/BTCV/main.py and
# UNETR/BTCV/main.py): AdamW (--optim_name adamw), --optim_lr 1e-4, --reg_weight 1e-5, --lrschedule warmup_cosine
# (LinearWarmupCosineAnnealingLR from 0 to 0), --warmup_epochs 50, --max_epochs 5000, --val_every 100, --batch_size 1
# volume, RandCropByPosNegLabeld num_samples=4 (utils/data_utils.py), DiceCELoss(to_onehot_y=True, softmax=True),
# --RandFlipd_prob 0.2, --RandRotate90d_prob 0.2, --RandScaleIntensityd_prob 0.1, --RandShiftIntensityd_prob 0.1.
SWIN_UNETR = {"arch": "swin_unetr", "loss_name": "dice_ce", "learning_rate": 1e-4, "min_learning_rate": 0.0,
              "weight_decay": 1e-5, "warmup_epochs": 50, "max_epochs": 5000, "val_interval": 100,
              "global_batch_size": 4, "batch_size": 1, "num_samples": 4, "accumulation_steps": 1,
              "freeze_encoder": False,
              "augmentation_probs": {"flip": 0.2, "rotate90": 0.2, "scale_intensity": 0.1, "shift_intensity": 0.1}}
EXPECTED = {
    "swin_unetr": SWIN_UNETR,
    # HySparK Sec. 2.3: "a combined loss (L_seg) of binary cross entropy (L_BCE) and Dice loss (L_Dice)"; Sec. 3.2:
    # "Detailed training hyperparameters for fine-tuning BTCV and MSD tasks are the same as Swin UNETR [30]".
    "hyspark": {**SWIN_UNETR, "arch": "hyspark", "loss_name": "dice_bce"},
    # MiM Sec. IV: "we used SwinUNETR [21] for fine-tuning on segmentation tasks [...] as per the settings of previous
    # works [9], [20]".
    "mim": {**SWIN_UNETR, "arch": "mim"},
    # GL-MAE, Experiments, "Finetuning setting": UNETR; "For end-to-end segmentation, the model was trained [...] for
    # 3000 epochs, with a batch size of 4, using an initial learning rate of 3e-4"; linear evaluation "finetuned for
    # 3000 epochs using an initial learning rate of 1e-2 [...] with a batch size of 4". The rest (optimizer, schedule,
    # loss) from UNETR's official code, as SWIN_UNETR.
    "glmae": {**SWIN_UNETR, "arch": "unetr", "learning_rate": 3e-4, "max_epochs": 3000},
    "glmae_linear": {**SWIN_UNETR, "arch": "unetr", "learning_rate": 1e-2, "max_epochs": 3000, "freeze_encoder": True},
}


def resolved(**settings) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(settings)
    return parser


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_the_recipe_resolves_to_its_sources_values(recipe, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parser = resolved(cpu_demo_scale=False, recipe=recipe)
    assert parser.get_parsed_content("hyper_parameters#recipe") == recipe  # logged to MLflow
    for key, value in EXPECTED[recipe].items():
        assert parser.get_parsed_content(key) == pytest.approx(value), key
    expected_loss = DiceBCELoss if EXPECTED[recipe]["loss_name"] == "dice_bce" else type(segmentation_loss("dice_ce"))
    assert type(parser.get_parsed_content("loss")) is expected_loss


def test_the_default_is_swin_unetr_on_a_gpu_and_the_cpu_demo_without_one():
    assert resolved(cpu_demo_scale=False).get_parsed_content("recipe") == "swin_unetr"
    demo = resolved(cpu_demo_scale=True)
    assert demo.get_parsed_content("recipe") == "cpu_demo"
    # constant learning rate (floor = peak, no warm-up) for the demo's 84 iterations, one crop per volume
    assert demo.get_parsed_content("min_learning_rate") == demo.get_parsed_content("learning_rate")
    assert (demo.get_parsed_content("num_samples"), demo.get_parsed_content("max_epochs")) == (1, 14)
    # the augmentation the demo was measured with: MONAI's tutorial's probabilities
    assert demo.get_parsed_content("augmentation_probs") == TUTORIAL_AUGMENTATION_PROBS


def test_the_training_pipeline_augments_with_the_recipes_probabilities():
    pipeline = resolved(cpu_demo_scale=False, recipe="hyspark").get_parsed_content("train#preprocessing")
    probs = {type(t).__name__: t.prob for t in pipeline.transforms if hasattr(t, "prob")}
    assert probs == {"RandFlipd": 0.2, "RandRotate90d": 0.2, "RandScaleIntensityd": 0.1, "RandShiftIntensityd": 0.1}
    assert sum(type(t).__name__ == "RandFlipd" for t in pipeline.transforms) == 3


@pytest.mark.parametrize("world_size, num_samples, accumulation", [("1", 1, 4), ("2", 2, 1), ("4", 1, 1)])
def test_the_global_batch_is_kept_on_any_number_of_processes(world_size, num_samples, accumulation, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", world_size)
    parser = resolved(cpu_demo_scale=False, num_samples=num_samples)
    assert parser.get_parsed_content("accumulation_steps") == accumulation
    monkeypatch.setenv("WORLD_SIZE", "8")  # 1 volume x 4 crops on each of 8 processes is 32 crops, not 4
    with pytest.raises(RuntimeError) as raised:
        resolved(cpu_demo_scale=False).get_parsed_content("accumulation_steps")
    assert "--batch_size" in str(raised.value.__cause__) or "global_batch_size" in str(raised.value.__cause__)


def test_dice_bce_is_the_mean_dice_of_the_sigmoids_plus_the_binary_cross_entropy_of_the_one_hot_label():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    label = torch.randint(0, 3, (2, 1, 4, 4, 4))
    target = torch.stack([(label[:, 0] == c).float() for c in range(3)], dim=1)
    p = torch.sigmoid(logits)
    intersection, total = (p * target).sum(dim=(2, 3, 4)), (p + target).sum(dim=(2, 3, 4))
    dice = (1 - (2 * intersection + 1e-5) / (total + 1e-5)).mean()
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert segmentation_loss("dice_bce")(logits, label) == pytest.approx((dice + bce).item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown segmentation loss 'dice'"):
        segmentation_loss("dice")


def test_warmup_cosine_counts_optimizer_steps_of_a_supervised_trainer_that_accumulates():
    """MONAI's SupervisedTrainer with ``accumulation_steps`` 2 on 5 iterations per epoch steps after iterations 2, 4
    and 5 of each epoch; the schedule gives each iteration the value of the step its window ends with."""
    network = torch.nn.Conv3d(1, 2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=123.0)
    schedule = lr_schedule(optimizer, lr=1.0, min_lr=0.0, warmup_epochs=1)
    data = [{"image": torch.randn(1, 1, 2, 2, 2), "label": torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)}] * 5
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=data, network=network, optimizer=optimizer,
        loss_function=segmentation_loss("dice_ce"), accumulation_steps=2, train_handlers=[schedule],
    )
    lrs, steps = [], []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda engine: lrs.append(optimizer.param_groups[0]["lr"]))
    optimizer.register_step_post_hook(lambda *_: steps.append(trainer.state.iteration))
    trainer.run()
    assert (schedule.warmup_steps, schedule.total_steps) == (3, 6) and steps == [2, 4, 5, 7, 9, 10]
    per_step = [warmup_cosine(step, peak_value=1.0, end_value=0.0, total_steps=6, warmup_steps=3) for step in range(6)]
    assert lrs == pytest.approx([per_step[step] for step in [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]])


# Wolf et al., "Downstream Tasks": "using the Adam optimizer with batch-size 64 and learning rate 10^-4 [...] Only the
# linear layer is trained during the first ten epochs before the complete model is fine-tuned". Silent values from the
# official notebooks (Wolfda95/SSL-MedicalImagining-CL-MAE, Downstream/*.ipynb): weight decay 5e-4, 70 epochs.
SLICE_PAPER = {"global_batch_size": 64, "batch_size": 64, "accumulation_steps": 1, "learning_rate": 1e-4,
               "weight_decay": 5e-4, "max_epochs": 70, "linear_epochs": 10}


def test_the_slice_classifier_fine_tunes_with_wolf_et_al_s_recipe(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / "ct_slice_classification" / "configs" / "train.json"))
    parser.update({"cpu_demo_scale": False})
    assert parser.get_parsed_content("recipe") == "paper"
    for key, value in SLICE_PAPER.items():
        assert parser.get_parsed_content(key) == pytest.approx(value), key
    monkeypatch.setenv("WORLD_SIZE", "2")
    parser.update({"batch_size": 16})  # 16 images x 2 processes x 2 accumulated iterations = 64
    assert parser.get_parsed_content("accumulation_steps") == 2
