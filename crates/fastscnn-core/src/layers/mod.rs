//! The layers Fast-SCNN is built of as candle modules, each loaded from a `VarBuilder` whose key names
//! follow the reference PyTorch implementation (the canonical layout of this project).

mod conv;
mod conv_bn_act;
mod dsconv;
mod mode;

pub use conv::{Conv2d, ConvConfig};
pub use conv_bn_act::{BatchNormMode, ConvBnAct, NormOptions};
pub use dsconv::DSConv;
pub use mode::{dropout, Mode, DEFAULT_DROPOUT};
