$sam = [string]$p.sam_account_name
$upn = [string]$p.user_principal_name
$path = [string]$p.path
$StewardPrior = [ordered]@{ existed = $false }
$existing = Find-StewardAdUser -Identity $sam
if ($null -ne $existing) {
    if ([string]$existing.UserPrincipalName -eq $upn -and (Get-StewardParentDn ([string]$existing.DistinguishedName)) -eq $path) {
        $StewardPrior = [ordered]@{ existed = $true }
        return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $existing) -Prior $StewardPrior)
    }
    return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('New-ADUser : The specified account already exists: ' + $sam + ' is ' + [string]$existing.UserPrincipalName + ' in ' + [string]$existing.DistinguishedName + '.'))
}
$clash = Find-StewardAdUser -Identity $upn
if ($null -ne $clash) {
    return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('New-ADUser : The user principal name ' + $upn + ' is already used by ' + [string]$clash.SamAccountName + '.'))
}
$name = $sam
foreach ($StewardField in @('name', 'display_name')) {
    if (Test-StewardValue $StewardField) { $name = [string](Get-StewardValue $StewardField); break }
}
$enabled = $true
if (Test-StewardValue 'enabled') { $enabled = [bool]$p.enabled }
$changeAtLogon = $true
if (Test-StewardValue 'change_password_at_logon') { $changeAtLogon = [bool]$p.change_password_at_logon }
$params = @{
    Name = $name
    SamAccountName = $sam
    UserPrincipalName = $upn
    Path = $path
    AccountPassword = (ConvertTo-SecureString -String ([string]$p.password) -AsPlainText -Force)
    Enabled = $enabled
    ChangePasswordAtLogon = $changeAtLogon
}
$optional = [ordered]@{ given_name = 'GivenName'; surname = 'Surname'; display_name = 'DisplayName'; title = 'Title'; department = 'Department'; mail = 'EmailAddress' }
foreach ($StewardField in $optional.Keys) {
    if (Test-StewardValue $StewardField) { $params[$optional[$StewardField]] = [string](Get-StewardValue $StewardField) }
}
if (Test-StewardValue 'manager') { $params['Manager'] = [string](Get-StewardAdUser -Identity ([string]$p.manager)).DistinguishedName }
try {
    New-ADUser @StewardAd @params -Confirm:$false
} catch {
    $StewardError = $_
    $half = Find-StewardAdUser -Identity $sam
    if ($null -ne $half) { Remove-ADUser @StewardAd -Identity ([string]$half.DistinguishedName) -Confirm:$false }
    throw $StewardError
}
$created = Get-StewardAdUser -Identity $sam
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $created) -Prior $StewardPrior)
