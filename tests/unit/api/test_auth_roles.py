from chiefofstate.api.auth import needed_role
from chiefofstate.core.auth import Role


def test_read_side_services_need_admin_health_nothing_and_the_rest_a_client() -> None:
    assert needed_role("/chief_of_state.v1.ReadSideManagerService/SkipOffset") is Role.ADMIN
    assert needed_role("/chiefofstate.internal.v1.ReadSideAdminService/ListReadSides") is Role.ADMIN
    assert needed_role("/chief_of_state.v1.ChiefOfStateService/ProcessCommand") is Role.CLIENT
    assert needed_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is Role.CLIENT
    assert needed_role("/grpc.health.v1.Health/Check") is None
