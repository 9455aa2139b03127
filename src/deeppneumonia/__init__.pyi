# Type stub of the lazy public API in __init__.py (keep both lists in step; tests/test_public_api.py checks it).
from deeppneumonia.api import (
    ImageLike as ImageLike,
)
from deeppneumonia.api import (
    TrainResult as TrainResult,
)
from deeppneumonia.api import (
    evaluate as evaluate,
)
from deeppneumonia.api import (
    explain as explain,
)
from deeppneumonia.api import (
    load_predictor as load_predictor,
)
from deeppneumonia.api import (
    load_source as load_source,
)
from deeppneumonia.api import (
    predict as predict,
)
from deeppneumonia.api import (
    read_image as read_image,
)
from deeppneumonia.api import (
    split_patients as split_patients,
)
from deeppneumonia.api import (
    train as train,
)
from deeppneumonia.config import Config as Config
from deeppneumonia.config import load_config as load_config
from deeppneumonia.data.dataset import XRayDataset as XRayDataset
from deeppneumonia.data.manifest import Box as Box
from deeppneumonia.data.manifest import Manifest as Manifest
from deeppneumonia.data.manifest import Record as Record
from deeppneumonia.data.splits import Split as Split
from deeppneumonia.errors import CheckpointError as CheckpointError
from deeppneumonia.errors import ConfigError as ConfigError
from deeppneumonia.errors import DataError as DataError
from deeppneumonia.errors import DeepPneumoniaError as DeepPneumoniaError
from deeppneumonia.errors import ImageReadError as ImageReadError
from deeppneumonia.evaluation.runner import EvalResult as EvalResult
from deeppneumonia.evaluation.runner import evaluate_checkpoint as evaluate_checkpoint
from deeppneumonia.extras import MissingExtraError as MissingExtraError
from deeppneumonia.inference.predictor import Predictor as Predictor

__version__: str
__all__: list[str]
