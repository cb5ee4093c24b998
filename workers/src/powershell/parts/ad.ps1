Import-Module ActiveDirectory
$StewardAd = @{}
if (Test-StewardValue 'server') { $StewardAd['Server'] = [string](Get-StewardValue 'server') }
function Get-StewardParentDn {
    param([string]$Dn)
    return ($Dn -replace '^(?:\\.|[^\\,])+,', '')
}
function Find-StewardAdUser {
    param([string]$Identity)
    $props = @('DisplayName', 'GivenName', 'Surname', 'mail', 'Manager', 'MemberOf', 'LockedOut', 'whenCreated', 'Title', 'Department')
    if ($Identity -match '@' -and $Identity -notmatch '=') {
        $StewardUpn = $Identity
        $found = @(Get-ADUser @StewardAd -Filter 'UserPrincipalName -eq $StewardUpn' -Properties $props)
        if ($found.Count -gt 1) { throw ('More than one AD user has the user principal name ' + $Identity + '.') }
        if ($found.Count -eq 1) { return $found[0] }
        return $null
    }
    try {
        return (Get-ADUser @StewardAd -Identity $Identity -Properties $props)
    } catch {
        if ($_.Exception.GetType().Name -eq 'ADIdentityNotFoundException') { return $null }
        throw
    }
}
function Get-StewardAdUser {
    param([string]$Identity)
    $found = Find-StewardAdUser -Identity $Identity
    if ($null -eq $found) { throw (New-Object System.Management.Automation.ItemNotFoundException ("Cannot find an object with identity: '" + $Identity + "'.")) }
    return $found
}
function ConvertTo-StewardAdUser {
    param($User)
    $created = $null
    if ($null -ne $User.whenCreated) { $created = $User.whenCreated.ToUniversalTime().ToString('o') }
    return [ordered]@{
        distinguished_name = [string]$User.DistinguishedName
        parent = (Get-StewardParentDn ([string]$User.DistinguishedName))
        object_guid = [string]$User.ObjectGUID
        sam_account_name = [string]$User.SamAccountName
        user_principal_name = [string]$User.UserPrincipalName
        enabled = [bool]$User.Enabled
        locked_out = [bool]$User.LockedOut
        display_name = $User.DisplayName
        given_name = $User.GivenName
        surname = $User.Surname
        title = $User.Title
        department = $User.Department
        mail = $User.mail
        manager = $User.Manager
        when_created = $created
    }
}
