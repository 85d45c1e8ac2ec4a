//! The onnx.proto field numbers this writer uses and `tensorrt`'s reader reads: one
//! declaration for both (onnx/onnx.proto, IR version 8). Messages are modules, fields
//! are constants; enum values a field takes sit beside it.

/// ModelProto.
pub mod model {
    pub const IR_VERSION: u32 = 1;
    pub const PRODUCER_NAME: u32 = 2;
    pub const PRODUCER_VERSION: u32 = 3;
    pub const GRAPH: u32 = 7;
    pub const OPSET_IMPORT: u32 = 8;
}
/// OperatorSetIdProto.
pub mod opset_id {
    pub const DOMAIN: u32 = 1;
    pub const VERSION: u32 = 2;
}
/// GraphProto.
pub mod graph {
    pub const NODE: u32 = 1;
    pub const NAME: u32 = 2;
    pub const INITIALIZER: u32 = 5;
    pub const INPUT: u32 = 11;
    pub const OUTPUT: u32 = 12;
}
/// NodeProto.
pub mod node {
    pub const INPUT: u32 = 1;
    pub const OUTPUT: u32 = 2;
    pub const NAME: u32 = 3;
    pub const OP_TYPE: u32 = 4;
    pub const ATTRIBUTE: u32 = 5;
    pub const DOMAIN: u32 = 7;
}
/// AttributeProto, and the AttributeType values of its `type`.
pub mod attribute {
    pub const NAME: u32 = 1;
    pub const F: u32 = 2;
    pub const I: u32 = 3;
    pub const T: u32 = 5;
    pub const INTS: u32 = 8;
    pub const TYPE: u32 = 20;
    pub const TYPE_FLOAT: i64 = 1;
    pub const TYPE_INT: i64 = 2;
    pub const TYPE_TENSOR: i64 = 4;
    pub const TYPE_INTS: i64 = 7;
}
/// TensorProto, and the DataLocation value of its `data_location`.
pub mod tensor {
    pub const DIMS: u32 = 1;
    pub const DATA_TYPE: u32 = 2;
    pub const NAME: u32 = 8;
    pub const RAW_DATA: u32 = 9;
    pub const EXTERNAL_DATA: u32 = 13;
    pub const DATA_LOCATION: u32 = 14;
    pub const LOCATION_EXTERNAL: i64 = 1;
}
/// StringStringEntryProto (TensorProto.external_data).
pub mod string_entry {
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
}
/// ValueInfoProto.
pub mod value_info {
    pub const NAME: u32 = 1;
    pub const TYPE: u32 = 2;
}
/// TypeProto.
pub mod type_proto {
    pub const TENSOR_TYPE: u32 = 1;
}
/// TypeProto.Tensor.
pub mod tensor_type {
    pub const ELEM_TYPE: u32 = 1;
    pub const SHAPE: u32 = 2;
}
/// TensorShapeProto and its Dimension.
pub mod shape {
    pub const DIM: u32 = 1;
    pub const DIM_VALUE: u32 = 1;
    pub const DIM_PARAM: u32 = 2;
}
