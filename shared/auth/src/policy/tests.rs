//! The policy table, row by row, and scopes.

use super::*;

/// The table of CONTRACT §6, row by row.
#[test]
fn roles_may_exactly_what_the_contract_says() {
    use Action::*;
    let every = [
        ManageTokens,
        ReadAudit,
        InstallPipelines,
        DeletePipelines,
        ReadReadyPipelines,
        ReadAllPipelines,
        CreateFiles,
        ReadFiles,
        DeleteFiles,
        RegisterRunResults,
        SubmitRuns,
        ReadRuns,
        ControlRuns,
        DeleteRuns,
        ReadNodes,
        DrainNodes,
        ReadMetrics,
        ForwardedReads,
    ];
    let table: [(Role, &[Action]); 4] = [
        (
            Role::Admin,
            &[
                ManageTokens,
                ReadAudit,
                InstallPipelines,
                DeletePipelines,
                ReadReadyPipelines,
                ReadAllPipelines,
                CreateFiles,
                ReadFiles,
                DeleteFiles,
                SubmitRuns,
                ReadRuns,
                ControlRuns,
                DeleteRuns,
                ReadNodes,
                DrainNodes,
                ReadMetrics,
            ],
        ),
        (
            Role::Operator,
            &[
                ReadReadyPipelines,
                ReadAllPipelines,
                ReadFiles,
                ReadRuns,
                ControlRuns,
                ReadNodes,
                DrainNodes,
                ReadMetrics,
            ],
        ),
        (
            Role::User,
            &[
                ReadReadyPipelines,
                CreateFiles,
                ReadFiles,
                DeleteFiles,
                SubmitRuns,
                ReadRuns,
                ControlRuns,
                DeleteRuns,
            ],
        ),
        (
            Role::Runner,
            &[ReadFiles, RegisterRunResults, ForwardedReads],
        ),
    ];
    for (role, allowed) in table {
        for action in every {
            assert_eq!(
                allows(role, action),
                allowed.contains(&action),
                "{} {action:?}",
                role.as_str()
            );
        }
    }
}

#[test]
fn scopes() {
    let user = Caller {
        accessor: Uuid::now_v7(),
        name: "u".into(),
        principal: Uuid::now_v7(),
        principal_name: "u".into(),
        role: Role::User,
        node: None,
        credential: Default::default(),
        unrestricted: false,
    };
    let mine = scope(&user);
    assert!(mine.owns(Some(user.principal)));
    assert!(!mine.owns(Some(Uuid::now_v7())));
    assert!(!mine.owns(None));
    assert_eq!(mine.owner_filter(), Some(user.principal));
    let anyone = Caller::unauthenticated_admin();
    assert!(scope(&anyone).owns(None));
    // `--auth none` runs pipelines end to end: its caller registers a run's results too.
    assert!(check(&anyone, Action::RegisterRunResults).is_ok());
    assert!(check(&anyone, Action::ForwardedReads).is_ok());
    let e = check(&user, Action::DrainNodes).unwrap_err();
    assert_eq!(e.to_string(), "a user token may not drain or undrain nodes");
}
